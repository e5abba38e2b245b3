"""The `imp` command: one entry point, t5x-style gin flags.

imp train [--gin_file F ...] [--gin.NAME=VALUE ...] [--gin_bindings B ...]
imp model-info [--gin_file F ...] [--gin.NAME=VALUE ...] [--json]
imp eval --checkpoint_dir DIR [--step N] [--evaluations a,b] [--cross_modal S:T] [--gin_file F ...]
imp probe-table --checkpoint_dir DIR [--checkpoint_dir DIR ...] --mixture NAME [--json]
imp generate --checkpoint_dir DIR --task T [--num N] [--beam K | --temperature T [--top_k K]]
imp ablation NAME [--seeds 3] [--out DIR] [--gin_file F ...] [--gin.NAME=VALUE ...]
                                        (NAME: see `imp ablation --help`)
imp data demo --out DIR [--seed N] [--num_images N]
imp data convert --media_dir DIR --annotations FILE --out DIR [--split S] [--workers N] [--strict]
imp data inspect [--gin_file F ...] [--mixture NAME] [--show N] [--throughput]
imp bench NAME [--json] [--repeats N] [flags of NAME]   (NAME: see `imp bench --help`)
"""

import argparse
import functools
import importlib
import json
import logging
import shlex
import sys
from pathlib import Path

from imp.bench import BENCHMARKS
from imp.errors import ImpError
from imp.training.studies import STUDIES

DEFAULT_RUN = "runs/demo.gin"


def _gin_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gin_file",
        action="append",
        default=[],
        help="gin file (repeatable); resolved against --gin_search_paths and gin/",
    )
    parser.add_argument(
        "--gin_bindings", action="append", default=[], help="a gin binding line (repeatable)"
    )
    parser.add_argument(
        "--gin_search_paths",
        action="append",
        default=[],
        help="folder to resolve gin files in (repeatable)",
    )


def _split_gin_flags(argv: list[str]) -> tuple[list[str], list[str]]:
    """Pulls `--gin.NAME=VALUE` (or `--gin.NAME VALUE`) out of argv as binding lines."""
    from imp.config import flag_to_binding

    rest, bindings = [], []
    args = iter(argv)
    for arg in args:
        if arg.startswith("--gin."):
            if "=" in arg:
                name, value = arg[len("--gin.") :].split("=", 1)
            else:
                name, value = arg[len("--gin.") :], next(args, None)
                if value is None:
                    raise ImpError(f"malformed gin flag '{arg}': expected --gin.NAME=VALUE")
            bindings.append(flag_to_binding(name, value))
        else:
            rest.append(arg)
    return rest, bindings


def _configure(args: argparse.Namespace, flag_bindings: list[str]) -> None:
    from imp import config, experiment  # noqa: F401 - registers Experiment and its parts
    from imp.partitioning import distributed  # noqa: F401 - registers initialize with gin
    from imp.tasks import catalog, datasets, demo  # noqa: F401 - register data hooks with gin
    from imp.training import loop  # noqa: F401 - registers the train options

    config.parse(
        args.gin_file or [DEFAULT_RUN], [*args.gin_bindings, *flag_bindings], args.gin_search_paths
    )


def _build_run(**overrides):
    """The configured train options and experiment, both validated (options first: they are
    cheap, and the experiment's config then records them)."""
    from imp.experiment import Experiment
    from imp.training import loop

    options = loop.TrainOptions.from_gin()
    return options, Experiment.from_gin(**overrides)


def _train(args, flag_bindings) -> int:
    _configure(args, flag_bindings)
    from imp.partitioning import distributed
    from imp.training import loop, report

    distributed.initialize()  # before anything asks JAX for devices
    options, experiment = _build_run()
    summary = loop.train(experiment, options)
    if summary:  # the first process reports
        print(report.format_table(summary))
    return 0


def _model_info(args, flag_bindings) -> int:
    _configure(args, flag_bindings)
    import gin

    from imp.modeling import info
    from imp.modeling.model import ImpModel, check_config

    model = gin.get_configurable(ImpModel)()
    check_config(model)
    table = info.model_info(model)
    print(json.dumps(table) if args.json else info.format_table(table))
    return 0


def _data_demo(args, flag_bindings) -> int:
    from imp.data import demo_world

    manifest = demo_world.ensure(args.out, args.seed, args.num_images)
    for name, d in manifest["datasets"].items():
        counts = ", ".join(f"{s} {v['num_examples']}" for s, v in d["splits"].items())
        print(f"{name}: {counts} examples, {d['num_classes']} classes")
    print(f"demo world in {args.out}")
    return 0


def _data_convert(args, flag_bindings) -> int:
    from imp.data import convert, media

    options = media.Options(
        fps=args.fps,
        short_side=args.short_side,
        sample_rate=args.sample_rate,
        max_seconds=args.max_seconds,
    )
    classes = None
    if args.classes:
        with open(args.classes) as f:
            classes = [line.strip() for line in f if line.strip()]
    summary = convert.convert(
        args.media_dir,
        args.annotations,
        args.out,
        split=args.split,
        options=options,
        classes=classes,
        examples_per_shard=args.examples_per_shard,
        workers=args.workers,
        strict=args.strict,
    )
    print("\n".join(summary.lines()))
    return 0


def _data_inspect(args, flag_bindings) -> int:
    _configure(args, flag_bindings)
    from imp.data import inspect
    from imp.experiment import Experiment

    experiment = Experiment.from_gin(mixture_or_task_name=args.mixture, writable=False)
    rows = inspect.mixture_rows(experiment.tasks, experiment.rates, experiment.tokens_per_example)
    print(json.dumps(rows) if args.json else inspect.format_rows(rows))
    if args.show:
        print("\n".join(inspect.show_examples(experiment.tasks, args.show)))
    if args.throughput:
        for spec in experiment.tasks:
            rates = {p: inspect.throughput(spec, prefetch=p) for p in (False, True)}
            print(
                f"{spec.name}: {rates[False]:.0f} examples/s without prefetch, "
                f"{rates[True]:.0f} with"
            )
    return 0


def _ablation(args, flag_bindings) -> int:
    from imp import config
    from imp.training import ablation

    study = STUDIES[args.study]
    out = Path(args.out or f"ablations/{study.name}")
    args.gin_file = [study.run_file, *args.gin_file]  # given files scale the study's run
    _configure(args, flag_bindings)  # registers the configurables; flags checked once
    # One compilation cache for the whole study: seeds and variants share most graphs.
    defaults = [f"train.compilation_cache = {str(out / 'compilation_cache')!r}"]
    lines = [*defaults, *args.gin_bindings, *flag_bindings]

    def build(extra: list[str]):
        config.parse(args.gin_file, [*lines, *extra], args.gin_search_paths)
        return _build_run()

    command = shlex.join(
        ["imp", "ablation", study.name, f"--seeds={args.seeds}", f"--out={out}"]
        + [f"--gin_file={f}" for f in args.gin_file[1:]]
        + [f"--gin_search_paths={p}" for p in args.gin_search_paths]
        + [f"--gin_bindings={b}" for b in [*args.gin_bindings, *flag_bindings]]
    )
    results = ablation.run(study, out, build, args.seeds, command)
    print(ablation.format_tables(results))
    print(f"report: {out / 'report.md'}")
    return 0


def _eval(args, flag_bindings) -> int:
    from imp.evaluation import checkpoint_eval, evaluator

    evaluations = args.evaluations.split(",")
    evaluator.check_evaluations(evaluations)
    run_dir = checkpoint_eval.run_dir_of(args.checkpoint_dir)
    args.gin_file = [str(run_dir / "config.gin"), *args.gin_file]
    _configure(args, flag_bindings)
    from imp.experiment import Experiment
    from imp.partitioning import distributed

    distributed.initialize()
    step = checkpoint_eval.pick_step(run_dir, args.step)
    experiment = Experiment.from_gin(model_dir=str(run_dir), writable=False, training=False)
    pair = _cross_modal_pair(args.cross_modal)
    summary = checkpoint_eval.evaluate(experiment, step, evaluations, args.out, pair)
    print(json.dumps(summary) if args.json else checkpoint_eval.format_table(summary))
    return 0


def _generate(args, flag_bindings) -> int:
    """A generation task's answers on held-out examples (the LiT decoder, seed 003)."""
    from imp import generation
    from imp.evaluation import checkpoint_eval, generated
    from imp.training.checkpoint import Checkpointer

    if args.beam is not None and args.temperature is not None:
        raise ImpError("--beam and --temperature: choose beam search or sampling")
    run_dir = checkpoint_eval.run_dir_of(args.checkpoint_dir)
    args.gin_file = [str(run_dir / "config.gin"), *args.gin_file]
    _configure(args, flag_bindings)
    from imp.experiment import Experiment

    step = checkpoint_eval.pick_step(run_dir, args.step)
    experiment = Experiment.from_gin(model_dir=str(run_dir), writable=False, training=False)
    spec = generated.generation_task(experiment, args.task)
    if args.temperature is not None:
        strategy = generation.Strategy("sample", temperature=args.temperature, top_k=args.top_k)
    elif args.beam is not None:
        strategy = (
            generation.Strategy("beam", beams=args.beam) if args.beam > 1 else generation.Strategy()
        )
    else:
        strategy = generation.Strategy.for_task(spec)
    checkpointer = Checkpointer(run_dir / "checkpoints", read_only=True)
    params = checkpointer.params(step, experiment.abstract_state["params"])
    rows = generated.generate(experiment, params, spec, args.num, strategy)
    print(json.dumps(rows) if args.json else generated.format_rows(spec, strategy, rows))
    return 0


def _probe_table(args, flag_bindings) -> int:
    """Seed 000 Table 9: linear probes of each run on every task of `--mixture`."""
    from imp.evaluation import checkpoint_eval, probe_table
    from imp.experiment import Experiment

    extra = list(args.gin_file)
    rows = []
    for checkpoint_dir in args.checkpoint_dir:
        run_dir = checkpoint_eval.run_dir_of(checkpoint_dir)
        args.gin_file = [str(run_dir / "config.gin"), *extra]
        _configure(args, flag_bindings)
        build = functools.partial(
            Experiment.from_gin, model_dir=str(run_dir), writable=False, training=False
        )
        trained = probe_table.trained_modalities(build().tasks)
        experiment = build(mixture_or_task_name=args.mixture)
        step = checkpoint_eval.pick_step(run_dir, None)
        label = str(Path(checkpoint_dir))
        rows.append(
            probe_table.probe_row(label, experiment, trained, step, checkpoint_eval.evaluate)
        )
    print(json.dumps(rows) if args.json else probe_table.format_table(rows))
    return 0


def _cross_modal_pair(value: str | None) -> tuple[str, str] | None:
    if value is None:
        return None
    source, sep, target = value.partition(":")
    if not (sep and source and target):
        raise ImpError(f"--cross_modal {value!r}: expected SOURCE:TARGET, e.g. vision:spectrogram")
    return source, target


def _bench(module, args, flag_bindings) -> int:
    if getattr(module, "USES_GIN", False):
        _configure(args, flag_bindings)
    elif flag_bindings:
        raise ImpError(
            f"imp bench {args.bench} takes no gin flags ({flag_bindings[0]}); see its --help"
        )
    module.run(args).emit(args.json)
    return 0


def build_parser(with_benchmarks: bool = False) -> argparse.ArgumentParser:
    """The parser; each benchmark's flags (and its imports) only `with_benchmarks`."""
    parser = argparse.ArgumentParser(
        prog="imp", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train (no flags: the embedded demo)")
    _gin_parser(train)
    train.set_defaults(run=_train)
    info = commands.add_parser("model-info", help="parameter counts of the configured model")
    _gin_parser(info)
    info.add_argument("--json", action="store_true")
    info.set_defaults(run=_model_info)
    evaluate = commands.add_parser("eval", help="evaluate a run's checkpoint")
    evaluate.add_argument("--checkpoint_dir", required=True, help="a run dir or its checkpoints/")
    evaluate.add_argument("--step", type=int, help="default: the latest checkpoint")
    evaluate.add_argument(
        "--evaluations",
        default="classification,zero_shot,retrieval,linear_probe,detection,generation",
        help="comma-separated subset of these",
    )
    evaluate.add_argument(
        "--cross_modal",
        metavar="SOURCE:TARGET",
        help="probe a model trained on SOURCE on tasks of TARGET, the TARGET embedder made from "
        "SOURCE's (seed 000's cross-modal probes: vision:spectrogram, spectrogram:vision)",
    )
    evaluate.add_argument("--out", help="default: MODEL_DIR/eval/step_N")
    evaluate.add_argument("--json", action="store_true")
    _gin_parser(evaluate)
    evaluate.set_defaults(run=_eval)
    generate = commands.add_parser(
        "generate", help="a generation task's answers on held-out examples (LiT decoder)"
    )
    generate.add_argument("--checkpoint_dir", required=True, help="a run dir or its checkpoints/")
    generate.add_argument("--task", required=True, help="one of the run's generation tasks")
    generate.add_argument("--step", type=int, help="default: the latest checkpoint")
    generate.add_argument("--num", type=int, default=8, help="held-out examples (default 8)")
    generate.add_argument(
        "--beam", type=int, help="beams of beam search (1: greedy; default: the task's)"
    )
    generate.add_argument("--temperature", type=float, help="sample at this temperature")
    generate.add_argument("--top_k", type=int, default=0, help="sample among the k likeliest")
    generate.add_argument("--json", action="store_true")
    _gin_parser(generate)
    generate.set_defaults(run=_generate)
    probes = commands.add_parser(
        "probe-table", help="linear probes of runs on every task of a mixture (seed 000 Table 9)"
    )
    probes.add_argument(
        "--checkpoint_dir", action="append", required=True, help="a run dir; one per row"
    )
    probes.add_argument("--mixture", required=True, help="the tasks probed (the columns)")
    probes.add_argument("--json", action="store_true")
    _gin_parser(probes)
    probes.set_defaults(run=_probe_table)
    ablation = commands.add_parser(
        "ablation", help="the papers' findings, measured (docs/ablations.md)"
    )
    studies = ablation.add_subparsers(dest="study", required=True, metavar="NAME")
    for name, study in STUDIES.items():  # light: the studies are data, the loop loads later
        sub = studies.add_parser(name, help=study.help)
        sub.add_argument("--seeds", type=int, default=3, help="seeds per variant (0, 1, ...)")
        sub.add_argument("--out", help=f"study folder (default: ablations/{name})")
        _gin_parser(sub)
        sub.set_defaults(run=_ablation)
    bench = commands.add_parser("bench", help="systems benchmarks (docs/benchmarks.md)")
    bench = bench.add_subparsers(dest="bench", required=True)
    for name in BENCHMARKS if with_benchmarks else ():
        module = importlib.import_module(f"imp.bench.{name}")
        summary = " ".join(module.__doc__.split("\n\n")[0].split())  # its first paragraph
        summary = summary.replace("%", "%%")  # argparse %-formats help strings
        sub = bench.add_parser(name, help=summary)
        sub.add_argument("--json", action="store_true", help="the report as JSON on the last line")
        sub.add_argument("--repeats", type=int, default=5, help="timed calls per measurement")
        module.add_arguments(sub)
        if getattr(module, "USES_GIN", False):
            _gin_parser(sub)
        sub.set_defaults(run=functools.partial(_bench, module))
    data = commands.add_parser("data", help="data tools").add_subparsers(dest="data", required=True)
    demo = data.add_parser("demo", help="generate the demo world")
    demo.add_argument("--out", required=True)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--num_images", type=int, help="use the first N of the 1797 digit images (default: all)"
    )
    demo.set_defaults(run=_data_demo)
    convert = data.add_parser("convert", help="media files + annotations -> DMVR TFRecords")
    convert.add_argument("--media_dir", required=True, help="folder the annotation paths are in")
    convert.add_argument(
        "--annotations", required=True, help="CSV or JSON lines (path, caption, label)"
    )
    convert.add_argument("--out", required=True, help="output folder of the data set")
    convert.add_argument("--split", default="train")
    convert.add_argument("--classes", help="file of class names, one per line (label order)")
    convert.add_argument("--workers", type=int, default=2)
    convert.add_argument("--examples_per_shard", type=int, default=256)
    convert.add_argument("--strict", action="store_true", help="stop at the first bad file")
    convert.add_argument("--fps", type=float, default=25.0)
    convert.add_argument("--short_side", type=int, default=256)
    convert.add_argument("--sample_rate", type=int, default=16000)
    convert.add_argument("--max_seconds", type=float, default=30.0)
    convert.set_defaults(run=_data_convert)
    inspect = data.add_parser("inspect", help="per-task shapes, tokens and rates of a mixture")
    _gin_parser(inspect)
    inspect.add_argument(
        "--mixture", help="default: the configured Experiment.mixture_or_task_name"
    )
    inspect.add_argument(
        "--show", type=int, default=0, help="print N decoded examples per data set"
    )
    inspect.add_argument("--throughput", action="store_true", help="measure examples/s per task")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(run=_data_inspect)
    return parser


def _quiet_libraries() -> None:
    """Keeps library chatter (seqio's cache notes, sentencepiece's loader) off the terminal."""
    import absl.logging
    import sentencepiece

    absl.logging.set_verbosity(absl.logging.ERROR)
    sentencepiece.set_min_log_level(2)
    for name in ("jax", "orbax", "tensorflow"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _quiet_libraries()
    argv = sys.argv[1:] if argv is None else argv
    try:
        rest, flag_bindings = _split_gin_flags(argv)
        args = build_parser(with_benchmarks=rest[:1] == ["bench"]).parse_args(rest)
        return args.run(args, flag_bindings)
    except ImpError as e:
        print(f"imp: error: {e.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
