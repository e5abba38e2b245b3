"""`imp data convert`: a folder of media files + captions/labels -> DMVR TFRecord shards.

Annotations are a CSV (columns `path`, and any of `caption`, `label`; several rows for one
path add captions; `label` may hold several labels separated by `;`) or JSON lines (keys
`path`, `caption` or `captions`, `label` or `labels`). Paths are relative to the media
folder. Files are decoded in parallel worker processes (`imp.data.media`); a file that cannot
be decoded is listed in `errors-{split}.txt` and skipped, or stops the run with `--strict`.
Shards are written to a staging folder and moved into place at the end, so an interrupted
run leaves no partial split. `dataset_info.json` and `classes.txt` record counts and class
names for `imp.tasks.catalog` and `imp.tasks.datasets`.
"""

import concurrent.futures
import csv
import dataclasses
import json
import multiprocessing
import shutil
from pathlib import Path

import tensorflow as tf
from tqdm import tqdm

from imp.data import dmvr, media
from imp.errors import ImpError

INFO = "dataset_info.json"
CLASSES = "classes.txt"


@dataclasses.dataclass
class Item:
    path: str
    captions: list[str] = dataclasses.field(default_factory=list)
    labels: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Summary:
    split: str
    written: int
    skipped: int
    shards: int
    bytes: int
    errors: list[tuple[str, str]]

    def lines(self) -> list[str]:
        out = [
            f"split {self.split}: {self.written} examples written in {self.shards} shards "
            f"({self.bytes / 2**20:.1f} MiB), {self.skipped} skipped"
        ]
        out += [f"  skipped {path}: {reason}" for path, reason in self.errors]
        return out


def read_annotations(path: str | Path) -> list[Item]:
    """Items in file order; rows naming the same media path are merged."""
    path = Path(path)
    if not path.is_file():
        raise ImpError(f"annotations file {path} does not exist")
    rows = _jsonl_rows(path) if path.suffix in (".jsonl", ".json") else _csv_rows(path)
    items: dict[str, Item] = {}
    for number, row in enumerate(rows, start=1):
        if not row.get("path"):
            raise ImpError(f"{path}: entry {number} has no 'path'")
        item = items.setdefault(row["path"], Item(row["path"]))
        item.captions += _as_list(row.get("captions", row.get("caption")))
        labels = _as_list(row.get("labels", row.get("label")))
        for label in labels:
            parts = [part.strip() for part in str(label).split(";") if part.strip()]
            item.labels += [part for part in parts if part not in item.labels]
    return list(items.values())


def _csv_rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise ImpError(f"{path}: the CSV header needs a 'path' column")
        return list(reader)


def _jsonl_rows(path: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ImpError(f"{path}:{number}: not JSON ({error.msg})") from None
    return rows


def _as_list(value) -> list[str]:
    if value is None or value == "":
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def convert(
    media_dir: str | Path,
    annotations: str | Path,
    out_dir: str | Path,
    split: str = "train",
    options: media.Options | None = None,
    classes: list[str] | None = None,
    examples_per_shard: int = 256,
    workers: int = 2,
    strict: bool = False,
    progress: bool = True,
) -> Summary:
    """Converts the annotated files of `media_dir` into `{out_dir}/{split}-*.tfrecord`.

    Labels are class names, numbered in `classes` order (default: the classes of the splits
    converted before into `out_dir`, else the sorted names seen).
    """
    media_dir, out_dir = Path(media_dir), Path(out_dir)
    options = options or media.Options()
    if not media_dir.is_dir():
        raise ImpError(f"media folder {media_dir} does not exist")
    items = read_annotations(annotations)
    if not items:
        raise ImpError(f"{annotations}: no entries")
    out_dir.mkdir(parents=True, exist_ok=True)
    info = _load_info(out_dir)
    class_names = classes or _class_names(info, items)
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted({label for item in items for label in item.labels} - set(index))
    if unknown:
        raise ImpError(f"{annotations}: labels not among the classes: {unknown[:5]}")

    staging = out_dir / f".staging-{split}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    errors, records = [], []
    jobs = [(str(media_dir / item.path), options) for item in items]
    context = multiprocessing.get_context("spawn")  # no forked TensorFlow state
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        decoded = pool.map(media.decode_or_reason, jobs, chunksize=4)
        bar = tqdm(
            zip(items, decoded, strict=True), total=len(items), disable=not progress, unit="file"
        )
        for item, result in bar:
            if isinstance(result, str):
                if strict:
                    shutil.rmtree(staging)
                    raise ImpError(f"cannot convert {media_dir / item.path}: {result}")
                errors.append((item.path, result))
                continue
            records.append(
                dmvr.encode(
                    result.frames or None,
                    result.waveform,
                    captions=item.captions,
                    labels=[index[label] for label in item.labels],
                    label_strings=item.labels,
                )
            )
    if not records:
        shutil.rmtree(staging)
        raise ImpError(f"no file of {annotations} could be converted; first error: {errors[0]}")
    num_shards = -(-len(records) // examples_per_shard)
    for shard in range(num_shards):
        path = staging / f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord"
        with tf.io.TFRecordWriter(str(path)) as writer:
            for record in records[shard::num_shards]:
                writer.write(record)
    size = sum(p.stat().st_size for p in staging.iterdir())
    for old in out_dir.glob(f"{split}-*.tfrecord"):
        old.unlink()
    for path in sorted(staging.iterdir()):
        path.rename(out_dir / path.name)
    staging.rmdir()
    (out_dir / f"errors-{split}.txt").write_text("".join(f"{p}\t{r}\n" for p, r in errors))
    summary = Summary(split, len(records), len(errors), num_shards, size, errors)
    _save_info(out_dir, info, summary, class_names, options)
    return summary


def _load_info(out_dir: Path) -> dict:
    path = out_dir / INFO
    return json.loads(path.read_text()) if path.exists() else {}


def _class_names(info: dict, items: list[Item]) -> list[str]:
    """The classes of splits converted before (their records hold these indices), else the
    sorted labels seen."""
    return info.get("class_names") or sorted({x for item in items for x in item.labels})


def _save_info(out_dir: Path, info: dict, summary: Summary, class_names, options) -> None:
    info = {
        **info,
        "class_names": class_names,
        "options": dataclasses.asdict(options),
        "splits": {
            **info.get("splits", {}),
            summary.split: {
                "num_examples": summary.written,
                "num_shards": summary.shards,
                "file_pattern": f"{summary.split}-*.tfrecord",
            },
        },
    }
    (out_dir / INFO).write_text(json.dumps(info, indent=1))
    if class_names:
        (out_dir / CLASSES).write_text("".join(f"{c}\n" for c in class_names))
