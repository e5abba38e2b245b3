"""`imp data convert`: a folder of media files + captions/labels -> DMVR TFRecord shards.

Annotations are a CSV (columns `path`, and any of `caption`, `label`; several rows for one
path add captions; `label` may hold several labels separated by `;`) or JSON lines (keys
`path`, `caption` or `captions`, `label` or `labels`). Paths are relative to the media
folder. Files are decoded in parallel worker processes (`imp.data.media`), a few at a time, and
streamed into shards; a file that cannot be decoded is listed in `errors-{split}.txt` and
skipped, or stops the run with `--strict`. Shards are written to a staging folder and replace
the split's old shards only once complete, so an interrupted run leaves the old split whole.
`dataset_info.json` and `classes.txt` record counts and class names for `imp.tasks.catalog`
and `imp.tasks.datasets`.
"""

import collections
import concurrent.futures
import csv
import dataclasses
import json
import logging
import multiprocessing
import shutil
import tempfile
from pathlib import Path

import numpy as np
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
    converted before into `out_dir`, else the sorted names seen); the records of earlier
    splits hold those numbers, so another order for them is refused. Files are decoded a few
    at a time and their records streamed into shards in a seeded random order (so a shard
    mixes classes whatever the annotation order), never holding a split in memory. The old
    shards of the split are replaced only once every new shard is complete.
    """
    media_dir, out_dir = Path(media_dir), Path(out_dir)
    options = options or media.Options()
    for name, value in (("--workers", workers), ("--examples_per_shard", examples_per_shard)):
        if not isinstance(value, int) or value < 1:
            raise ImpError(f"imp data convert {name} = {value!r}: expected an integer >= 1")
    if not media_dir.is_dir():
        raise ImpError(f"media folder {media_dir} does not exist")
    items = read_annotations(annotations)
    if not items:
        raise ImpError(f"{annotations}: no entries")
    out_dir.mkdir(parents=True, exist_ok=True)
    info = _load_info(out_dir)
    class_names = _class_names(info, items, classes, split, out_dir)
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted({label for item in items for label in item.labels} - set(index))
    if unknown:
        raise ImpError(f"{annotations}: labels not among the classes: {unknown[:5]}")

    staging = out_dir / f".staging-{split}"
    shutil.rmtree(staging, ignore_errors=True)  # an interrupted conversion's partial shards
    staging.mkdir()
    items = [items[i] for i in np.random.default_rng(0).permutation(len(items))]
    shards = _ShardWriter(staging, split, examples_per_shard)
    errors = []
    jobs = [(str(media_dir / item.path), options) for item in items]
    context = multiprocessing.get_context("spawn")  # no forked TensorFlow state
    try:
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            decoded = _in_order(pool, jobs, window=4 * workers)
            bar = tqdm(
                zip(items, decoded, strict=True),
                total=len(items),
                disable=not progress,
                unit="file",
            )
            for item, result in bar:
                if isinstance(result, str):
                    if strict:
                        raise ImpError(f"cannot convert {media_dir / item.path}: {result}")
                    errors.append((item.path, result))
                    continue
                shards.write(
                    dmvr.encode(
                        result.frames or None,
                        result.waveform,
                        captions=item.captions,
                        labels=[index[label] for label in item.labels],
                        label_strings=item.labels,
                    )
                )
        shards.close()
        if not shards.written:
            raise ImpError(f"no file of {annotations} could be converted; first error: {errors[0]}")
    except BaseException:
        shards.close()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    num_shards = shards.finish()
    size = sum(p.stat().st_size for p in staging.iterdir())
    _replace_split(out_dir, staging, split)
    (out_dir / f"errors-{split}.txt").write_text("".join(f"{p}\t{r}\n" for p, r in errors))
    summary = Summary(split, shards.written, len(errors), num_shards, size, errors)
    _save_info(out_dir, info, summary, class_names, options)
    return summary


def _shard_pattern(split: str) -> str:
    """The split's shards, `{split}-00000-of-00004.tfrecord`, and not another split's whose
    name starts the same (`train-extra-...`)."""
    return f"{split}-[0-9]*-of-[0-9]*.tfrecord"


def _in_order(pool, jobs: list, window: int):
    """`media.decode_or_reason` of each job, in order, with at most `window` in flight."""
    pending = collections.deque()
    for job in jobs:
        pending.append(pool.submit(media.decode_or_reason, job))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class _ShardWriter:
    """Records into consecutive shards of `per_shard` records, one file open at a time;
    `finish` names them `{split}-{i:05d}-of-{n:05d}.tfrecord`."""

    def __init__(self, folder: Path, split: str, per_shard: int):
        self.folder, self.split, self.per_shard = folder, split, per_shard
        self.written, self.paths, self.writer = 0, [], None

    def write(self, record: bytes) -> None:
        if self.written % self.per_shard == 0:
            self.close()
            self.paths.append(self.folder / f"part-{len(self.paths):05d}")
            self.writer = tf.io.TFRecordWriter(str(self.paths[-1]))
        self.writer.write(record)
        self.written += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def finish(self) -> int:
        n = len(self.paths)
        for i, path in enumerate(self.paths):
            path.rename(self.folder / f"{self.split}-{i:05d}-of-{n:05d}.tfrecord")
        return n


def _replace_split(out_dir: Path, staging: Path, split: str) -> None:
    """Moves the complete new shards in place of the split's old ones. The old ones move
    aside first and are deleted last, so an interruption never leaves the split without a
    full set of shards somewhere (an aside folder of an interrupted run is kept, and named)."""
    old = sorted(out_dir.glob(_shard_pattern(split)))
    aside = None
    if old:
        aside = Path(tempfile.mkdtemp(prefix=f".replaced-{split}-", dir=out_dir))
        for path in old:
            path.rename(aside / path.name)
    for path in sorted(staging.iterdir()):
        path.rename(out_dir / path.name)
    staging.rmdir()
    if aside is not None:
        shutil.rmtree(aside)
    leftovers = sorted(p.name for p in out_dir.glob(f".replaced-{split}-*"))
    if leftovers:
        logging.getLogger(__name__).warning(
            "%s holds shards set aside by an interrupted conversion: %s", out_dir, leftovers
        )


def _load_info(out_dir: Path) -> dict:
    path = out_dir / INFO
    return json.loads(path.read_text()) if path.exists() else {}


def _class_names(
    info: dict, items: list[Item], classes: list[str] | None, split: str, out_dir: Path
) -> list[str]:
    """The label order: `classes`, else that of the splits converted before (their records
    hold these indices), else the sorted labels seen. Another order than the earlier splits'
    would silently renumber their labels, so it is refused."""
    earlier = info.get("class_names")
    others = sorted(set(info.get("splits", {})) - {split})
    if classes is not None:
        if earlier and others and list(classes) != list(earlier):
            raise ImpError(
                f"--classes differs from the classes of the splits {others} converted before "
                f"into {out_dir} ({CLASSES}), whose records hold label numbers in that order; "
                "pass the same classes, or convert into a new folder"
            )
        return list(classes)
    if earlier and others:
        return earlier
    return sorted({x for item in items for x in item.labels})


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
                "file_pattern": _shard_pattern(summary.split),
            },
        },
    }
    (out_dir / INFO).write_text(json.dumps(info, indent=1))
    if class_names:
        (out_dir / CLASSES).write_text("".join(f"{c}\n" for c in class_names))
