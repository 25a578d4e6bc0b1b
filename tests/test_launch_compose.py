"""Each job is composed and validated once, before launch: the jobs are what Hydra composes
for their overrides, the launchers run the planned jobs (a finished one starts nothing), a
local job runs its resolved config without Hydra, and the config groups that only name a
registry entry come from the registry."""

import json
import logging

import hydra
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore

from src.config_groups import REGISTRY_GROUPS, registry_names
from src.launch import main
from src.plan import CONF_DIR, expand, to_run_config, write_plan
from src.rundir import read_result


def counting_compose(monkeypatch) -> list:
    calls = []

    def counted(*args, **kwargs):
        calls.append(kwargs.get("overrides"))
        return compose(*args, **kwargs)

    monkeypatch.setattr(hydra, "compose", counted)
    return calls


def test_a_sweep_is_composed_once_per_choice_of_config_groups(monkeypatch):
    calls = counting_compose(monkeypatch)
    assert len(expand(["setup=smoke", "criterion=magnitude,snip", "seed=1,2,3"], check_data=False)) == 6
    assert len(calls) == 3  # the launch's config, then one per criterion
    calls.clear()
    expand(["setup=smoke", "train.epochs=1"], check_data=False)
    assert len(calls) == 1  # a single run is the launch's own composition


@pytest.fixture
def keep_logging():
    """Hydra's main configures the root logger for its run: put it back for the other tests."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_launch_composes_per_choice_of_config_groups_not_per_job(tmp_path, monkeypatch, keep_logging):
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    calls = []
    compose_config = ConfigLoaderImpl.load_configuration
    monkeypatch.setattr(
        ConfigLoaderImpl,
        "load_configuration",
        lambda self, *args, **kwargs: calls.append(1) or compose_config(self, *args, **kwargs),
    )
    for seeds in ("1,2", "1,2,3,4,5,6"):
        args = ["-m", "setup=smoke", f"seed={seeds}", f"runs_root={tmp_path}", "name=s"]
        for job in expand(args[1:], check_data=False):  # finished runs: the launch starts no process
            job.run_dir.mkdir(parents=True, exist_ok=True)
            (job.run_dir / "result.json").write_text('{"status": "completed"}')
        calls.clear()
        assert main(args) == 0
        # the launch's config and its one choice of config groups, then Hydra's own two of the
        # launch's config (its mode, its sweep): none per job (before, 5 + 2 per job)
        assert len(calls) == 4


def test_jobs_are_what_hydra_composes_for_their_overrides():
    jobs = expand(
        [
            "setup=smoke",
            "criterion=snip,mest",
            "seed=1,2",
            "sparsity.density=0.1,0.2",
            "+data.kwargs.binary=false",
            "optim.milestones=[0.3,0.6]",
            "++logging.tags=[a]",
        ],
        check_data=False,
    )
    assert len(jobs) == 8
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for job in jobs:
            assert to_run_config(compose("config", overrides=job.overrides))[0] == job.config, job.overrides


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs_typo=3", "Could not override 'train.epochs_typo'"),
        ("+train.epochs=3", "Could not append to config. An item is already at 'train.epochs'"),
    ],
)
def test_overrides_hydra_refuses_are_refused_in_sweeps_too(override, message):
    for sweep in ([override], [override, "seed=1,2"]):  # Hydra's composition, and a sweep's
        with pytest.raises(Exception, match=message):
            expand(["setup=smoke", *sweep], check_data=False)


def test_the_local_launcher_runs_the_saved_plan_starts_no_process_for_a_finished_run_and_composes_nothing(
    tmp_path, monkeypatch
):
    from hydra_plugins.dst_local_launcher.local_launcher import LocalPoolLauncher
    from src.plan import planned_jobs
    from src.status import SweepProgress

    (job,) = expand(["setup=smoke", f"runs_root={tmp_path}"], check_data=False)
    job.finished = "completed"
    sweep = tmp_path / "sweep"
    write_plan(sweep, [job], ["setup=smoke"])
    launcher = LocalPoolLauncher(threads_per_job=1)
    launcher.progress, launcher.plan = SweepProgress(1, 1), planned_jobs(sweep)
    monkeypatch.setattr(hydra, "compose", lambda *a, **k: pytest.fail("composed"))
    ret, run = launcher._prepare(sweep, 0, list(job.key))
    assert run is None and ret.return_value == {"status": "skipped"} and not (sweep / "0").exists()
    with pytest.raises(RuntimeError, match="not a job of this launch's plan"):
        launcher._job(["setup=smoke", "seed=9"])


def test_a_local_job_runs_its_resolved_config_without_hydra(tmp_path, monkeypatch, capsys):
    (job,) = expand(["setup=smoke", "train.epochs=1", f"runs_root={tmp_path}"], check_data=False)
    config = job.config.to_dict()
    config["train"].update(threads=1, progress=False)
    (tmp_path / "config.json").write_text(json.dumps(config))

    def no_hydra(*args, **kwargs):
        raise AssertionError("a job composed its config again")

    for name in ("compose", "main", "initialize_config_dir"):
        monkeypatch.setattr(hydra, name, no_hydra)
    assert main(["--run-config", str(tmp_path / "config.json"), "--run-dir", str(job.run_dir)]) == 0
    assert read_result(job.run_dir)["config"] == config
    assert f"completed: {job.run_dir}" in capsys.readouterr().out


@pytest.mark.parametrize("group", sorted(REGISTRY_GROUPS))
def test_every_registered_name_is_an_option_of_its_group(group):
    from hydra.core.global_hydra import GlobalHydra

    field, package = REGISTRY_GROUPS[group]
    names = registry_names(group)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        assert sorted(GlobalHydra.instance().config_loader().get_group_options(group)) == names
        for name in names:
            assert compose("config", overrides=[f"{group}={name}"])[package][field] == name


def test_a_newly_registered_criterion_is_an_option_without_a_config_file():
    from src.sparse.criteria import CRITERIA, LOWEST, Criterion

    CRITERIA.register("zz_new", Criterion("zz_new", lambda w, g, m: w.abs(), LOWEST, False))
    try:
        (job,) = expand(["setup=smoke", "criterion=zz_new"], check_data=False)
        assert job.config.sparsity.criterion == "zz_new"
    finally:
        del CRITERIA["zz_new"]
        ConfigStore.instance().repo["criterion"].pop("zz_new.yaml", None)
