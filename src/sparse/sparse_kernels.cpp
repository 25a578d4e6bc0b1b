// CPU kernels of the sparse backend (src/sparse/kernels.py builds and loads this file).
//
// Every dense operand is "batch innermost": a row-major (rows, batch) matrix, so each stored
// entry of the sparse matrix touches one contiguous run of `batch` numbers, which vector
// registers hold whole. The products are parallel over the sparse matrix's rows (OpenMP,
// the same runtime and thread count as torch's own kernels): each thread writes only its
// rows, so no thread ever waits for another.
//
//   spmm:    out[r, :] = sum_j values[j] * dense[col[j], :]  over row r's entries j
//            (`value_index`, when given, says which value each entry repeats: the values of a
//            transposed matrix or of a convolution's matrix without a gathered copy)
//   sampled: out[j] = dot(left[r, :], right[col[j], :])  for each entry j of row r
//            (a weight gradient at the pattern: only the active entries of left x right^T)
//   transpose: between the batch-innermost layout and torch's usual (batch, features), in
//            tiles that stay in cache (torch's strided copy is several times slower)
//
// Plain C functions, no torch headers: the file compiles in about a second.

#include <cstdint>
#include <cstring>

namespace {

// One vector register: 64 bytes where the CPU has AVX-512, 32 (AVX2's ymm) otherwise. A 64-byte
// type on an AVX2 target is split into two registers, so a chunk's accumulators alone fill all
// 16 ymm registers and spill, and the scalar-times-vector broadcast goes through the stack: the
// products ran several times slower than torch's there (docs/kernels.md).
#if defined(__AVX512F__)
constexpr int kBytes = 64;
#else
constexpr int kBytes = 32;
#endif
constexpr int kRegs = 8;      // registers per chunk of the batch
constexpr int kPrefetch = 4;  // entries ahead whose dense rows are fetched into cache

template <typename T>
struct Vec {
    static constexpr int lanes = kBytes / sizeof(T);
    // aligned(sizeof(T)): dense rows start anywhere, so loads must not assume alignment
    typedef T type __attribute__((vector_size(kBytes), aligned(sizeof(T))));
};

template <typename T>
inline T value_at(const T* values, const int64_t* value_index, int64_t j) {
    return value_index ? values[value_index[j]] : values[j];
}

// Only large products go parallel: a thread team costs microseconds.
inline bool worth_threads(int64_t nnz, int64_t batch) { return nnz * batch > (1 << 15); }

template <typename T>
void spmm(int64_t rows, const int32_t* crow, const int32_t* col, const T* values, const int64_t* value_index,
          const T* dense, int64_t batch, T* out) {
    using V = typename Vec<T>::type;
    constexpr int L = Vec<T>::lanes, chunk = L * kRegs;
    const int64_t full = batch / chunk * chunk;
#pragma omp parallel for schedule(dynamic, 16) if (worth_threads(crow[rows], batch))
    for (int64_t r = 0; r < rows; ++r) {
        T* y = out + r * batch;
        for (int64_t b = 0; b < full; b += chunk) {  // a whole chunk in registers
            V acc[kRegs] = {};
            const int64_t end = crow[r + 1];
            for (int64_t j = crow[r]; j < end; ++j) {
                if (j + kPrefetch < end) __builtin_prefetch(dense + col[j + kPrefetch] * batch + b);
                const V w = V{} + value_at(values, value_index, j);  // one broadcast per entry
                const V* x = reinterpret_cast<const V*>(dense + col[j] * batch + b);
#pragma GCC unroll 8
                for (int k = 0; k < kRegs; ++k) acc[k] += w * x[k];
            }
            std::memcpy(y + b, acc, sizeof(acc));
        }
        if (full < batch) {  // the rest of the batch
            for (int64_t b = full; b < batch; ++b) y[b] = 0;
            for (int64_t j = crow[r]; j < crow[r + 1]; ++j) {
                const T w = value_at(values, value_index, j);
                const T* x = dense + col[j] * batch;
                for (int64_t b = full; b < batch; ++b) y[b] += w * x[b];
            }
        }
    }
}

// The sum of a register's lanes by halving (512 -> 256 -> 128 bits), not lane by lane.
typedef float f8 __attribute__((vector_size(32)));
typedef float f4 __attribute__((vector_size(16)));
typedef double d4 __attribute__((vector_size(32)));
typedef double d2 __attribute__((vector_size(16)));

inline float reduce8(f8 a) {
    f4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
    return (b[0] + b[2]) + (b[1] + b[3]);
}

inline double reduce4(d4 a) {
    d2 b = __builtin_shufflevector(a, a, 0, 1) + __builtin_shufflevector(a, a, 2, 3);
    return b[0] + b[1];
}

#if defined(__AVX512F__)
inline float reduce(Vec<float>::type v) {
    return reduce8(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                   __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15));
}

inline double reduce(Vec<double>::type v) {
    return reduce4(__builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7));
}
#else
inline float reduce(Vec<float>::type v) { return reduce8(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7)); }

inline double reduce(Vec<double>::type v) { return reduce4(__builtin_shufflevector(v, v, 0, 1, 2, 3)); }
#endif

template <typename T>
void sampled(int64_t rows, const int32_t* crow, const int32_t* col, const T* left, const T* right, int64_t batch,
             T* out) {
    using V = typename Vec<T>::type;
    constexpr int L = Vec<T>::lanes, chunk = L * kRegs;
    const int64_t full = batch / chunk * chunk;
#pragma omp parallel for schedule(dynamic, 16) if (worth_threads(crow[rows], batch))
    for (int64_t r = 0; r < rows; ++r) {
        const T* g = left + r * batch;
        for (int64_t j = crow[r]; j < crow[r + 1]; ++j) out[j] = 0;
        for (int64_t b = 0; b < full; b += chunk) {
            V gv[kRegs];  // this row's chunk of `left`, read once for all its entries
            std::memcpy(gv, g + b, sizeof(gv));
            const int64_t end = crow[r + 1];
            for (int64_t j = crow[r]; j < end; ++j) {
                if (j + kPrefetch < end) __builtin_prefetch(right + col[j + kPrefetch] * batch + b);
                const V* x = reinterpret_cast<const V*>(right + col[j] * batch + b);
                // a tree, not a chain: the additions of one entry do not wait on each other
                V s01 = gv[0] * x[0] + gv[1] * x[1], s23 = gv[2] * x[2] + gv[3] * x[3];
                V s45 = gv[4] * x[4] + gv[5] * x[5], s67 = gv[6] * x[6] + gv[7] * x[7];
                out[j] += reduce((s01 + s23) + (s45 + s67));
            }
        }
        if (full < batch) {
            for (int64_t j = crow[r]; j < crow[r + 1]; ++j) {
                const T* x = right + col[j] * batch;
                T s = 0;
                for (int64_t b = full; b < batch; ++b) s += g[b] * x[b];
                out[j] += s;
            }
        }
    }
}

template <typename T>
void transpose(int64_t rows, int64_t cols, const T* src, T* dst) {
    // A tile of 8 source rows: each destination row gets 8 consecutive numbers per tile, and
    // the 8 source rows stream through the cache once.
    constexpr int64_t tile = 4;
#pragma omp parallel for schedule(static) if (rows * cols > (1 << 16))
    for (int64_t r0 = 0; r0 < rows; r0 += tile) {
        const int64_t r1 = r0 + tile < rows ? r0 + tile : rows;
        for (int64_t c = 0; c < cols; ++c) {
#pragma GCC novector
            for (int64_t r = r0; r < r1; ++r) dst[c * rows + r] = src[r * cols + c];
        }
    }
}

// torch.optim.SGD's update of one parameter in one pass over it (torch makes one pass per
// term): d = grad + weight_decay * param; buf = momentum * buf + (1 - dampening) * d (buf = d
// on the first step); d = d + momentum * buf (Nesterov) or buf; param -= lr * d.
template <typename T>
void sgd(int64_t n, T* param, const T* grad, T* buf, double lr, double momentum, double dampening,
         double weight_decay, int nesterov, int first) {
    const T lr_ = lr, mom = momentum, damp = 1 - dampening, wd = weight_decay;
#pragma omp parallel for simd schedule(static) if (n > (1 << 16))
    for (int64_t i = 0; i < n; ++i) {
        T d = grad[i] + wd * param[i];
        if (buf != nullptr) {
            const T b = first ? d : mom * buf[i] + damp * d;
            buf[i] = b;
            d = nesterov ? d + mom * b : b;
        }
        param[i] -= lr_ * d;
    }
}

}  // namespace

extern "C" {

void dst_sgd_f32(int64_t n, float* param, const float* grad, float* buf, double lr, double momentum,
                 double dampening, double weight_decay, int nesterov, int first) {
    sgd(n, param, grad, buf, lr, momentum, dampening, weight_decay, nesterov, first);
}

void dst_sgd_f64(int64_t n, double* param, const double* grad, double* buf, double lr, double momentum,
                 double dampening, double weight_decay, int nesterov, int first) {
    sgd(n, param, grad, buf, lr, momentum, dampening, weight_decay, nesterov, first);
}

void dst_transpose_f32(int64_t rows, int64_t cols, const float* src, float* dst) { transpose(rows, cols, src, dst); }

void dst_transpose_f64(int64_t rows, int64_t cols, const double* src, double* dst) {
    transpose(rows, cols, src, dst);
}

void dst_spmm_f32(int64_t rows, const int32_t* crow, const int32_t* col, const float* values,
                  const int64_t* value_index, const float* dense, int64_t batch, float* out) {
    spmm(rows, crow, col, values, value_index, dense, batch, out);
}

void dst_spmm_f64(int64_t rows, const int32_t* crow, const int32_t* col, const double* values,
                  const int64_t* value_index, const double* dense, int64_t batch, double* out) {
    spmm(rows, crow, col, values, value_index, dense, batch, out);
}

void dst_sampled_f32(int64_t rows, const int32_t* crow, const int32_t* col, const float* left, const float* right,
                     int64_t batch, float* out) {
    sampled(rows, crow, col, left, right, batch, out);
}

void dst_sampled_f64(int64_t rows, const int32_t* crow, const int32_t* col, const double* left, const double* right,
                     int64_t batch, double* out) {
    sampled(rows, crow, col, left, right, batch, out);
}

}  // extern "C"
