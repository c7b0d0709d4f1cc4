"""``train --mlflow`` and ``train --wandb`` on the synthetic dataset, read back through each library: the options,
each epoch once (also after a relaunch that repeats an epoch the tracker already holds), the evaluation results
and the run's records; without the library, a one-line error naming the extra."""
import json
import shutil
import struct
import subprocess
import sys

import pytest

from robustdistill.testing import plugin_host, train_run

RECORDS = ("config.json", "metrics.jsonl", "environment.json", "eval.json")
# what `robustdistill eval RUN_DIR --json RUN_DIR/eval.json` writes, with an attack it has not finished yet
EVALUATION = {"clean": 0.34375, "pgd20": 0.15625, "autoattack": 0.0, "eps": 0.1, "n": 32,
              "seconds": {"clean": 0.1, "pgd20": 1.5, "autoattack": 0.0}, "pending": ["autoattack"]}


def history(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_relaunch_and_evaluate(out, flag):
    """Epoch 1; epoch 2 by ``--resume``; then epoch 2 again from the epoch-1 checkpoint (a kill that fell between
    the tracker's logging of epoch 2 and its checkpoint); then an ``eval.json`` and a relaunch that only finishes."""
    host = plugin_host()
    train_run(host, ["at"], out, flag)
    shutil.copy(out / "last.pt", out.parent / "epoch1.pt")
    train_run(host, ["at"], out, flag, "--epochs", "2", resume=True)
    shutil.copy(out.parent / "epoch1.pt", out / "last.pt")
    train_run(host, ["at"], out, flag, "--epochs", "2", resume=True)
    (out / "eval.json").write_text(json.dumps(EVALUATION))
    train_run(host, ["at"], out, flag, "--epochs", "2", resume=True)
    return history(out)


def test_mlflow_holds_one_run_with_each_epoch_once_the_evaluation_and_the_records(tmp_path):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "run"
    epochs = train_relaunch_and_evaluate(out, "--mlflow")
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("robustdistill")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["plugin"] == '["at"]' and run.data.params["dataset"] == "synthetic"
    assert run.data.params["epochs"] == "1", "the options as first launched (config.json holds the last)"
    loss = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in loss] == [1, 2], "each epoch once"
    assert [m.value for m in loss] == pytest.approx([e["loss"] for e in epochs], rel=1e-6)
    assert [m.value for m in client.get_metric_history(run.info.run_id, "terms/ce_adv")] == pytest.approx(
        [e["terms"]["ce_adv"] for e in epochs], rel=1e-6)
    assert [m.value for m in client.get_metric_history(run.info.run_id, "val_pgd")] == pytest.approx(
        [e["val_pgd"] for e in epochs])
    evaluated = {key: client.get_metric_history(run.info.run_id, key) for key in run.data.metrics if "eval/" in key}
    assert {key: [(m.step, m.value) for m in logged] for key, logged in evaluated.items()} == {
        "eval/clean": [(2, 0.34375)], "eval/pgd20": [(2, 0.15625)]}, "the finished attacks, once"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == set(RECORDS)
    copy = client.download_artifacts(run.info.run_id, "config.json", str(tmp_path))
    assert json.loads(open(copy).read()) == json.loads((out / "config.json").read_text())


def wandb_records(path):
    """The records of an offline run file (``run-ID.wandb``): W&B's protocol buffers in the 32 KiB blocks of a
    LevelDB log after a 7-byte header; a record is 4 bytes of checksum, 2 of length, 1 of type (1: whole, 2 first,
    3 middle, 4 last part)."""
    from wandb.proto import wandb_internal_pb2

    data, records, part, at = path.read_bytes(), [], b"", 7
    assert data[:4] == b":W&B"
    while at + 7 <= len(data):
        if 32768 - at % 32768 < 7:
            at += 32768 - at % 32768
            continue
        length, kind = struct.unpack("<HB", data[at + 4:at + 7])
        part += data[at + 7:at + 7 + length]
        at += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(part)
            records.append(record)
            part = b""
    return records


def test_wandb_offline_logs_each_epoch_once_across_relaunches_with_the_evaluation_and_the_records(tmp_path):
    import wandb

    out = tmp_path / "run"
    epochs = train_relaunch_and_evaluate(out, "--wandb")
    wandb.teardown()  # what the end of a train process does: the offline writer has written everything
    run_id = json.loads((out / "wandb.json").read_text())["id"]
    launches = sorted((out / "wandb").glob(f"offline-run-*-{run_id}*"))  # a second launch in a second gets "-1"
    assert len(launches) == 4, "one offline part per launch, all of the same W&B run"
    steps, config, summary = {}, {}, {}
    for launch in launches:
        for record in wandb_records(launch / f"run-{run_id}.wandb"):
            kind = record.WhichOneof("record_type")
            if kind == "history":
                values = {"/".join([i.key] if i.key else i.nested_key): json.loads(i.value_json)
                          for i in record.history.item}
                assert record.history.step.num not in steps, "an epoch logged twice"
                steps[record.history.step.num] = values
            elif kind in ("run", "config"):  # the config as the run starts, then its changes
                updates = record.run.config.update if kind == "run" else record.config.update
                config.update({i.key: json.loads(i.value_json) for i in updates})
            elif kind == "summary":
                summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                for i in record.summary.update})
    assert sorted(steps) == [1, 2]
    assert [steps[e]["loss"] for e in (1, 2)] == pytest.approx([e["loss"] for e in epochs], rel=1e-6)
    assert [steps[e]["terms/ce_adv"] for e in (1, 2)] == pytest.approx([e["terms"]["ce_adv"] for e in epochs],
                                                                          rel=1e-6)
    assert config["plugin"] == ["at"] and config["dataset"] == "synthetic" and config["epochs"] == 2
    assert {k: v for k, v in summary.items() if k.startswith("eval")} == {"eval/clean": 0.34375,
                                                                          "eval/pgd20": 0.15625}
    files = launches[-1] / "files"
    for name in RECORDS:
        assert (files / name).read_bytes() == (out / name).read_bytes(), name


@pytest.mark.parametrize("library", ["mlflow", "wandb"])
def test_without_the_library_the_error_is_one_line_naming_the_extra(tmp_path, library):
    code = (f"import sys; sys.modules[{library!r}] = None; from robustdistill._cli import main; "
            f"sys.exit(main(['train', '--{library}', '--dataset', 'synthetic', '--out', {str(tmp_path / 'r')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"robustdistill: error: --{library} needs the {library} package: pip install {library} "
        f"(or pip install 'robustdistill[{library}]')"]
    assert not (tmp_path / "r").exists()
