"""`python -m chi_helpers ...`: the commands behind the notebooks, for a terminal or a Makefile."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from chi_helpers import food11
from chi_helpers.local.target import DEFAULT_WORKDIR
from chi_helpers.variants import DEFAULT_VARIANT, VARIANTS

DEFAULT_STATE_DIR = DEFAULT_WORKDIR / "stack"


def _per_class(text: str) -> dict[str, int]:
    """`training=8,validation=3,evaluation=3` -> a dict; every split must be named."""
    try:
        pairs = dict(item.split("=", 1) for item in text.split(","))
        counts = {split: int(n) for split, n in pairs.items()}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected training=N,validation=N,evaluation=N, got {text!r}")
    if set(counts) != set(food11.SPLITS):
        raise argparse.ArgumentTypeError(f"name each of {', '.join(food11.SPLITS)} once, got {text!r}")
    return counts


def cmd_stack(args) -> int:
    from chi_helpers.local import stack as local_stack

    if args.action == "archive":
        from chi_helpers.archive import location, make

        if args.output is None:
            raise ValueError("`stack archive` needs --output FILE: where to write the archive (e.g. mlflow-history.tar)")
        make.make(location.from_state_dir(args.state_dir), args.output, runs_only=args.runs_only)
        return 0
    if args.action == "up":
        verified = None
        if args.restore:
            from chi_helpers.archive import manifest, restore

            # Before the server starts: a damaged archive changes nothing, not even a new state dir.
            verified = manifest.verify(args.restore, say=print)
            restore.preflight(verified)
        stack = local_stack.up(
            args.state_dir, host=args.host, port=args.port, backend_store_uri=args.backend_store_uri,
            artifacts_destination=args.artifacts_destination, timeout=args.timeout,
            object_store=args.object_store, auth=args.auth, auth_file=args.auth_file,
            public_address=args.public_address,
        )
        if args.restore:
            from chi_helpers.archive import location, restore

            restore.restore(args.restore, location.from_state_dir(args.state_dir), merge=args.merge, manifest=verified)
        print(f"MLFLOW_TRACKING_URI={stack.url}")
    elif args.action == "status":
        state = local_stack.status(args.state_dir)
        if args.json:
            print(json.dumps(state, indent=2))
        elif not state["running"]:
            print(f"no MLflow server running from {args.state_dir}")
        else:
            health = "answers" if state["healthy"] else "does NOT answer /health"
            print(f"MLflow server at {state['url']} (pid {state['pid']}) {health}")
            print(f"  backend store:  {state['backend_store_uri']}")
            print(f"  artifacts:      {state['artifacts_destination']}")
            print(f"  log:            {state['log']}")
            if state.get("auth_file"):
                print(f"  sign-in:        {state['auth_file']} (MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD)")
        return 0 if state["running"] else 3
    else:
        local_stack.down(args.state_dir)
    return 0


def cmd_data(args) -> int:
    if args.action == "sample":
        from chi_helpers.local import sample_data

        counts = sample_data.make_sample_dataset(
            args.root, per_class=args.per_class, image_size=args.image_size or sample_data.DEFAULT_IMAGE_SIZE,
            seed=args.seed,
        )
        print(food11.describe(counts))
        return 0
    return food11.main([args.action, str(args.root)])


def cmd_bench(args) -> int:
    from chi_helpers import bench

    if args.what == "server":
        bench.bench_server(calls=args.calls or 200, megabytes=args.megabytes)
    else:
        bench.bench_tracking(calls=args.calls or 30, blocks=args.blocks, epochs_per_block=args.epochs,
                             image_size=args.image_size, per_class=args.per_class)
    return 0


def cmd_build(args) -> int:
    from chi_helpers.series import build

    return build.build(check=args.check)


def lease_name_from(args, user: str) -> str:
    # Only an absent option takes the default: an empty one is a mistake to report.
    return f"mlflow_{user}" if args.lease_name is None else args.lease_name


def cmd_run(args) -> int:
    if args.target == "chameleon":
        from chi_helpers.chameleon import plan as chameleon_plan
        from chi_helpers.parameters import default_user
        from chi_helpers.variants import get_variant

        profile = get_variant(args.gpu)
        user = args.user or default_user()
        actions = chameleon_plan.plan(
            profile,
            lease_name=lease_name_from(args, user),
            node_name=profile.default_node if args.node is None else args.node,
            project=args.project, site=args.site or profile.site, user=user, repo=args.repo, ref=args.ref,
        )
        if args.dry_run:
            print(chameleon_plan.render(actions))
            print(f"\n--dry-run: {len(actions)} steps printed, none made")
            return 0
        from chi_helpers.chameleon.run import run_chameleon

        report = run_chameleon(
            profile, lease_name_from(args, user), profile.default_node if args.node is None else args.node,
            args.project, args.site or profile.site, user, rc_file=args.rc_file or "", repo=args.repo or "",
            ref=args.ref, output_dir=args.output, lease_timeout=args.lease_timeout * 60, end_lease=args.end_lease,
            lease_poll=args.lease_poll, expected_photos=args.expect_photos, restore_from=args.restore,
            until=args.until,
        )
        return 0 if report["passed"] else 1
    from chi_helpers.local.run import run_series

    report = run_series(target=args.target, variant=args.gpu, workdir=args.workdir, output_dir=args.output,
                        port=args.port, keep_stack=args.keep_stack, restore_from=args.restore)
    return 0 if report["passed"] else 1


def cmd_release(args) -> int:
    from chi_helpers.chameleon import login, release
    from chi_helpers.parameters import default_user
    from chi_helpers.variants import get_variant

    from chi_helpers.parameters import check_name

    user = args.user or default_user()
    site = args.site or get_variant(args.gpu).site  # the VM variant's lease is at KVM@TACC
    lease_name = f"mlflow_{user}" if args.lease_name is None else args.lease_name
    check_name("lease_name", lease_name, "mlflow_abc123")  # before any request
    check_name("user", user, "abc123")
    login.sign_in(args.rc_file or "", args.project or "", site)
    release.release(lease_name, user, stop_stack=not args.keep_stack)
    return 0


def cmd_twin(args) -> int:
    from chi_helpers.twin import daemon

    if args.action == "up":
        print(daemon.up(args.state_dir, speed=args.speed))  # the last line: the RC file's path
    elif args.action == "status":
        state = daemon.status(args.state_dir)
        if args.json:
            print(json.dumps({k: state[k] for k in ("leases", "servers", "floating_ips")}, indent=1))
        else:
            print(f"twin {'running at ' + state['url'] if state['running'] else 'not running'}")
            for kind in ("leases", "servers", "floating_ips"):
                shown = ", ".join(f"{x.get('name') or x.get('address')} ({x['status']})" for x in state[kind])
                print(f"  {kind:13} {shown or 'none'}")
    elif args.action == "fault":
        print(json.dumps(daemon.fault(args.fault, args.state_dir)))
    else:
        daemon.down(args.state_dir)
    return 0


def cmd_screens(args) -> int:
    from chi_helpers.progress import Clock
    from chi_helpers.ui_walk import screens, walk

    clock = Clock()
    archive = args.archive
    if archive is None:
        try:
            archive = screens.newest_archive(args.workdir)
        except screens.ScreensError:
            from chi_helpers.local.run import run_series

            clock.say(f"no archive of a series run in {args.workdir / 'archives'}: running the series first")
            report = run_series(workdir=args.workdir)
            if not report["passed"]:
                raise screens.ScreensError("the series failed, so there is no history to walk through: see its report")
            archive = screens.newest_archive(args.workdir)
    try:
        written = screens.regenerate(archive, args.output, clock=clock)
    except walk.WalkError as failed:
        print(f"the walk failed: {failed}", file=sys.stderr)
        return 1
    clock.say(f"{len(written)} figures in {args.output}")
    return 0


def cmd_engine(args) -> int:
    import subprocess

    from chi_helpers.containers import base_image, compose, engine
    from chi_helpers.progress import Clock

    clock = Clock()
    if args.action == "up":
        engine.install(clock=clock)
        engine.start(args.state_dir, clock=clock)
        base_image.make(clock=clock)
        compose.build_ci_images(base_image.BASE_IMAGE, clock=clock)
    elif args.action == "down":
        if engine.answers():
            # Rebuilt images leave their old layers untagged; the tagged ones stay for the next run.
            subprocess.run(["docker", "image", "prune", "-f"], capture_output=True)
        engine.stop(args.state_dir, clock=clock)
    else:
        version = engine.answers()
        print(f"Docker engine {version}, Compose {engine.compose_version()}" if version else "no Docker engine answers")
        return 0 if version else 3
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chi_helpers", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    stack = sub.add_parser("stack", help="the local tracking stack: an MLflow server as a background process; archive and restore its history")
    stack.add_argument("action", choices=["up", "status", "down", "archive"])
    stack.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                       help="where the server's state, log and (by default) data live (default: %(default)s)")
    stack.add_argument("--host", default="127.0.0.1")
    stack.add_argument("--port", type=int, default=8000)
    stack.add_argument("--backend-store-uri", help="default: SQLite in the state dir; e.g. postgresql://user@host/db")
    stack.add_argument("--artifacts-destination", help="default: a folder in the state dir; e.g. s3://bucket/")
    stack.add_argument("--object-store", action="store_true",
                       help="keep artifacts in a local S3 endpoint's bucket, as the node's stack does in MinIO")
    stack.add_argument("--auth", action="store_true",
                       help="ask for a sign-in, as the node's stack does (MLflow's auth app; admin account in the state dir)")
    stack.add_argument("--auth-file", type=Path,
                       help="with --auth: the env file with the admin account (made if missing; default: in the state dir)")
    stack.add_argument("--public-address", metavar="NAME",
                       help="up: answer a browser at http://NAME:PORT as the node's MLflow answers at its floating IP "
                            "(the Compose file's options: sign-in, allowed hosts, CORS origin; needs --object-store)")
    stack.add_argument("--timeout", type=float, default=120, help="seconds to wait for /health")
    stack.add_argument("--json", action="store_true", help="status as JSON")
    stack.add_argument("--output", type=Path, help="archive: the file to write (it must not exist yet)")
    stack.add_argument("--runs-only", action="store_true",
                       help="archive: leave out the logged models no registered version uses (a smaller file)")
    stack.add_argument("--restore", type=Path, metavar="FILE",
                       help="up: bring back the history an archive holds (the stack must hold no runs yet)")
    stack.add_argument("--merge", action="store_true",
                       help="up --restore: into a stack that holds runs already; clashing ids are reported and skipped")
    stack.set_defaults(func=cmd_stack)

    data = sub.add_parser("data", help="Food-11: make the small local set, organize, verify, fetch the real one")
    data.add_argument("action", choices=["sample", "organize", "verify", "fetch"])
    data.add_argument("root", type=Path, help="the Food-11 folder (holds training/, validation/, evaluation/)")
    data.add_argument("--per-class", type=_per_class, default=None,
                      help="sample: photos per class per split, e.g. training=8,validation=3,evaluation=3")
    data.add_argument("--image-size", type=int, help="sample: photo size in pixels (default 64)")
    data.add_argument("--seed", type=int, default=0, help="sample: random seed")
    data.set_defaults(func=cmd_data)

    bench = sub.add_parser("bench", help="print what tracking costs on this machine")
    bench.add_argument("what", choices=["tracking", "server"])
    bench.add_argument("--calls", type=int, help="tracking: log_metrics calls per mode (30); server: log_batch calls per client (200)")
    bench.add_argument("--megabytes", type=int, default=64, help="server: size of the uploaded artifact")
    bench.add_argument("--blocks", type=int, default=3, help="alternating blocks of untracked/tracked epochs")
    bench.add_argument("--epochs", type=int, default=4, help="epochs per block")
    bench.add_argument("--image-size", type=int, default=64)
    bench.add_argument("--per-class", type=int, default=24, help="training photos per class")
    bench.set_defaults(func=cmd_bench)

    build = sub.add_parser("build", help="write every variant's notebooks and web pages from notebooks/source")
    build.add_argument("--check", action="store_true", help="write nothing; fail if a generated file differs")
    build.set_defaults(func=cmd_build)

    run = sub.add_parser("run", help="run the whole series with papermill and write a report")
    run.add_argument("--target", choices=["local", "chameleon"], default="local")
    run.add_argument("--gpu", choices=sorted(VARIANTS), default=DEFAULT_VARIANT,
                     help="which variant's notebooks the chameleon target runs (the local target has one build)")
    run.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="data and stack (default: %(default)s)")
    run.add_argument("--output", type=Path, help="executed notebooks and report (default: WORKDIR/output/<time>)")
    run.add_argument("--port", type=int, default=8000)
    run.add_argument("--keep-stack", action="store_true", help="leave the MLflow server running afterwards")
    run.add_argument("--restore", type=Path, metavar="FILE",
                     help="an archive notebook 08 made: notebook 04 brings its history back into the new stack")
    chameleon = run.add_argument_group("chameleon target")
    chameleon.add_argument("--node", help="the host to reserve by name (default: the variant's)")
    chameleon.add_argument("--lease-name", help="default: mlflow_<user>")
    chameleon.add_argument("--project", default="", help="your Chameleon project, e.g. CHI-123456")
    chameleon.add_argument("--site", help="default: the variant's site")
    chameleon.add_argument("--user", help="default: this login's name")
    chameleon.add_argument("--repo", help="a git URL the node clones the series from (default: upload this checkout)")
    chameleon.add_argument("--ref", default="main", help="the branch or tag of --repo")
    chameleon.add_argument("--rc-file", help="an OpenStack RC file with your credentials (default: the OS_* environment)")
    chameleon.add_argument("--lease-timeout", type=float, default=70, help="minutes to wait for the lease to start")
    chameleon.add_argument("--lease-poll", type=float, default=60, help="seconds between looks at a PENDING lease")
    chameleon.add_argument("--expect-photos", type=_per_class, metavar="training=N,validation=N,evaluation=N",
                           help="the photos per split the node's data volume must hold (default: Food-11's)")
    chameleon.add_argument("--end-lease", action="store_true",
                           help="notebook 08 ends the lease, server and address (default: they stay for a rerun; "
                                "`release` ends them)")
    chameleon.add_argument("--until", metavar="NN", help="stop after this notebook (e.g. 04: lease, server, node "
                           "setup and stack again, on a lease the series already ran on); default: the whole series")
    chameleon.add_argument("--dry-run", action="store_true", help="print every cloud call and node command; make none")
    run.set_defaults(func=cmd_run)
    release = sub.add_parser("release", help="on Chameleon: stop the stack, delete the server and its IP, end the lease")
    release.add_argument("--lease-name", help="default: mlflow_<user>")
    release.add_argument("--user", help="default: this login's name")
    release.add_argument("--project", help="your Chameleon project (not with an application credential: it has its own)")
    release.add_argument("--gpu", choices=sorted(VARIANTS), default=DEFAULT_VARIANT, help="the variant (its site)")
    release.add_argument("--site", help="default: the variant's site")
    release.add_argument("--rc-file", help="an OpenStack RC file with your credentials (default: the OS_* environment)")
    release.add_argument("--keep-stack", action="store_true", help="do not try to stop the containers first")
    release.set_defaults(func=cmd_release)
    from chi_helpers.ui_walk.figures import SCREENS_DIR

    screens = sub.add_parser("screens", help="walk the MLflow UI as the node-side notebooks do, in Chromium, on a "
                             "stack holding a local series run's history, and regenerate the lesson's figures")
    screens.add_argument("--archive", type=Path, help="the history to walk through (default: the newest archive "
                         "notebook 08 left in the work folder; without one the series runs first)")
    screens.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="the local target's work folder")
    screens.add_argument("--output", type=Path, default=SCREENS_DIR, help="where the figures go")
    screens.set_defaults(func=cmd_screens)
    engine = sub.add_parser("engine", help="a Docker engine for the container tests: up (install what is missing, "
                            "start dockerd, make the base image, build the stack's images), down (stop what up "
                            "started), status")
    engine.add_argument("action", choices=["up", "down", "status"])
    engine.add_argument("--state-dir", type=Path, default=DEFAULT_WORKDIR / "engine")
    engine.set_defaults(func=cmd_engine)
    from chi_helpers.twin.world import FAULTS  # a plain tuple: importing it starts nothing

    twin = sub.add_parser("twin", help="a twin of Chameleon's services on this machine, to rehearse the chameleon target")
    twin.add_argument("action", choices=["up", "status", "down", "fault"])
    twin.add_argument("fault", nargs="?", help=f"with `fault`: one of {', '.join(FAULTS)}")
    twin.add_argument("--state-dir", type=Path, default=DEFAULT_WORKDIR / "twin")
    twin.add_argument("--speed", type=float, default=60.0, help="how much faster waits for a lease's start pass")
    twin.add_argument("--json", action="store_true", help="with `status`: the resources as JSON")
    twin.set_defaults(func=cmd_twin)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from chi_helpers.local.stack import StackError

    try:
        return args.func(args)
    except (StackError, food11.DataLayoutError, FileExistsError, FileNotFoundError, ValueError, RuntimeError) as error:  # ParameterError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
