"""`pushsync subscribe|unsubscribe|subscribe-all`."""

from __future__ import annotations

from pushsync import contract
from pushsync.cli.common import counted, ensure_schema, session


def _ids(args) -> tuple[str, str, str]:
    return (contract.pool_id(args.pool_id), contract.identity_id(args.identity_id),
            contract.device_id(args.device_id))


def subscribe(args) -> int:
    from store import repo

    pool_id, identity, device_id = _ids(args)
    dataset = contract.dataset_name(args.dataset)
    ensure_schema()
    with session() as s:
        repo.require_pool(s, pool_id)
        new = repo.subscribe(s, pool_id, identity, [dataset], device_id)
    print(f"device {device_id} {'subscribed' if new else 'already subscribed'} to {dataset}")
    return 0


def unsubscribe(args) -> int:
    from store import repo

    pool_id, identity, device_id = _ids(args)
    dataset = contract.dataset_name(args.dataset)
    ensure_schema()
    with session() as s:
        repo.require_pool(s, pool_id)
        removed = repo.unsubscribe(s, pool_id, identity, dataset, device_id)
    print(f"device {device_id} {'unsubscribed from' if removed else 'was not subscribed to'} {dataset}")
    return 0


def subscribe_all(args) -> int:
    from store import repo

    pool_id, identity, device_id = _ids(args)
    subset = None
    if args.datasets is not None:
        subset = [contract.dataset_name(d.strip()) for d in args.datasets.split(",")]
    ensure_schema()
    with session() as s:
        repo.require_pool(s, pool_id)
        datasets = subset if subset is not None else repo.known_datasets(s, pool_id, identity)
        repo.subscribe(s, pool_id, identity, datasets, device_id)
    print(f"device {device_id} subscribed to {counted(len(datasets), 'dataset')}"
          + (f": {', '.join(datasets)}" if datasets else ""))
    return 0


def register(sub) -> None:
    for name, func, text in (("subscribe", subscribe, "subscribe a device to a dataset"),
                             ("unsubscribe", unsubscribe, "unsubscribe a device from a dataset")):
        sp = sub.add_parser(name, help=text)
        for arg in ("pool_id", "identity_id", "dataset", "device_id"):
            sp.add_argument(arg, metavar=arg.upper())
        sp.set_defaults(func=func)
    sa = sub.add_parser("subscribe-all", help="subscribe a device to every dataset of its identity")
    for arg in ("pool_id", "identity_id", "device_id"):
        sa.add_argument(arg, metavar=arg.upper())
    sa.add_argument("--datasets", metavar="A,B", help="only these datasets")
    sa.set_defaults(func=subscribe_all)
