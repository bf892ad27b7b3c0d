"""Shared fixtures: sample photos, the built default .mar, the default archive unpacked for
in-process handler tests, and a real TorchServe on loopback. Only tests marked e2e may start
TorchServe: any other test that does fails (pytest_runtest_protocol below)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts import repo
from scripts.packaging.sample_photos import write_photos
from tests.support.client_cli import fresh_venv
from tests.support.context import unpack
from tests.support.keys import write_key_pair
from tests.support.labelled import write_labelled
from tests.support.scheduling import ALONE, RUN_FIRST, pair_of, scope_of
from tests.support.servers import MODEL, forbidden, serving


@pytest.hookimpl(tryfirst=True)  # before pytest's own `-m` selection reads the marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The balancer first, then end-to-end before unit tests (the longest first, so the parallel
    phase's workers finish together), each keeping its collection order; `alone` marked."""
    items.sort(key=lambda item: (not item.nodeid.startswith(RUN_FIRST), "/unit/" in item.nodeid))
    for item in items:
        if pair_of(item.nodeid) in ALONE:
            item.add_marker(pytest.mark.alone)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`-n 2 --dist loadscope` with scope_of as the scope (xdist's own is the module)."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class PairScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

    return PairScheduling(config, log)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """Around a test not marked e2e (its fixtures' setup included), starting TorchServe fails it,
    so `pytest -m "not e2e"` never boots a server."""
    if item.get_closest_marker("e2e"):
        return (yield)
    with forbidden(item.nodeid):
        return (yield)


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> dict[str, Path]:
    """name.ext -> path of the real sample photos as JPEG and PNG."""
    out = tmp_path_factory.mktemp("photos")
    return {p.name: p for p in write_photos(out, ("jpg", "png"))}


@pytest.fixture(scope="session")
def default_mar() -> Path:
    mar = repo.MODEL_STORE / f"{MODEL}.mar"
    if not mar.is_file():
        from scripts.packaging import package
        from scripts.packaging.plan import PackagingInputs

        package.package(PackagingInputs())
    return mar


@pytest.fixture(scope="session")
def default_model_dir(tmp_path_factory, default_mar) -> Path:
    """The default archive unpacked as TorchServe unpacks it (read-only use: copy to change it)."""
    return unpack(default_mar, tmp_path_factory.mktemp("model_dir"))


@pytest.fixture(scope="session")
def server(tmp_path_factory, default_mar):
    """The default model served by a real TorchServe, shared by the end-to-end tests. Its
    working directory is one serve start creates, as `make serve` does (tests check its mode)."""
    with serving(tmp_path_factory.mktemp("torchserve") / "run", default_mar.parent, min_ready=2) as srv:
        yield srv


# Fixtures that a module's unit and e2e halves share, built once per session.

@pytest.fixture(scope="session")
def cat(photos) -> bytes:
    return photos["cat.jpg"].read_bytes()


@pytest.fixture(scope="session")
def crafted_cases() -> list:
    """The crafted-images corpus (scripts/bench/micro/crafted_images.py) for the default model."""
    from scripts.bench.micro import crafted_images
    from tests.support.crafted import CFG

    return crafted_images.corpus(CFG)


@pytest.fixture(scope="session")
def installed_client(tmp_path_factory) -> Iterator[Path]:
    """The client library installed alone into a fresh venv."""
    with fresh_venv(tmp_path_factory.mktemp("client_install")) as env:
        yield env


@pytest.fixture(scope="session")
def fresh_mar(tmp_path_factory) -> Path:
    """An archive built by the code under test (not a possibly older model_store/ build)."""
    from scripts.packaging import package
    from scripts.packaging.plan import PackagingInputs

    store = tmp_path_factory.mktemp("prov_store")
    return package.package(PackagingInputs(model_name="lite0_prov", export_dir=store))


@pytest.fixture(scope="session")
def signing_keys(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """(private, public) PEM files: "ours" and "other" (P-256), and an Ed25519 pair."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    out = tmp_path_factory.mktemp("keys")
    return {"ours": write_key_pair(ec.generate_private_key(ec.SECP256R1()), out / "ours"),
            "other": write_key_pair(ec.generate_private_key(ec.SECP256R1()), out / "other"),
            "ed25519": write_key_pair(ed25519.Ed25519PrivateKey.generate(), out / "ed25519")}


@pytest.fixture(scope="session")
def labelled(tmp_path_factory, default_model_dir) -> Path:
    return write_labelled(tmp_path_factory.mktemp("labelled"), default_model_dir)


@pytest.fixture(scope="session")
def evaluated_mar(tmp_path_factory, labelled) -> Path:
    """The default model packaged with --eval-dir and the top-1 the labels imply (1.0)."""
    from scripts.packaging import package
    from scripts.packaging.plan import PackagingInputs

    store = tmp_path_factory.mktemp("evaluated")
    return package.package(PackagingInputs(model_name="lite0_eval", export_dir=store, eval_dir=labelled,
                                           expect_top1=1.0))
