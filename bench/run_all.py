"""`make bench`: run every benchmark and write JSON under bench/results/."""

from . import (
    analysis_report,
    crossover,
    lifecycle,
    run_files,
    sparse_backend,
    sparse_profile,
    sparse_step,
    sweep_throughput,
    train_speed,
)

if __name__ == "__main__":
    sparse_step.main()
    train_speed.main()
    sparse_backend.main()
    sparse_profile.main()
    crossover.main(update_table=False)
    lifecycle.main()
    run_files.main()
    analysis_report.main()
    sweep_throughput.main()
