"""`imp ablation objectives`: three real (tiny, one-step) runs and their table."""

from conftest import SHARED, TINY, WORLD_IMAGES

from imp import cli
from imp.training import ablation


def test_three_runs_and_their_table(world_dir, tmp_path, capsys):
    flags = [
        f"prepare_demo.data_dir='{world_dir}'",
        f"prepare_demo.num_images={WORLD_IMAGES}",
        "prepare_demo.batch_size=8",
        "TRAIN_STEPS=1",
        "train.end_evaluations=('classification',)",
        *SHARED,
        *TINY,
    ]
    argv = ["ablation", "objectives", f"--out={tmp_path}", *(f"--gin_bindings={f}" for f in flags)]
    assert cli.main(argv) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert table[0].startswith("| run | image zero-shot |") and len(table) == 2 + 3
    rows = {line.split("|")[1].strip(): line for line in table[2:]}
    assert list(rows) == list(ablation.VARIANTS)
    nce_only = [c.strip() for c in rows["NCE only (AGD)"].split("|")[2:-1]]
    assert nce_only[3:5] == ["-", "-"]  # no classification task, no classifier accuracy
    summed = [c.strip() for c in rows["NCE + softmax, summed"].split("|")[2:-1]]
    assert all(0 <= float(c) <= 1 for c in summed[3:5])
    for index in range(3):
        assert (tmp_path / str(index) / "checkpoints" / "1").is_dir()
    assert "Schedule.name = 'summed'" in (tmp_path / "1" / "config.gin").read_text()
    assert (
        "MIXTURE_OR_TASK_NAME = 'demo_contrastive'" in (tmp_path / "0" / "config.gin").read_text()
    )
