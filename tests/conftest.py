"""Shared fixtures: small synthetic datasets, written once per test session."""

import pytest
from hypothesis import settings

import gpupre as gp

# No per-example deadline: the first example of a test pays numba's compile, and this suite checks
# behaviour, not speed (speed is measured in bench/).
settings.register_profile("gpupre", deadline=None)
settings.load_profile("gpupre")

# Small enough to keep the suite fast, big enough for several row groups and long lists.
SPEC = gp.storage.SynthSpec(
    rows=600, num_dense=6, num_sparse=8, num_scored=2, num_planted=4, row_group_rows=200
)


@pytest.fixture(scope="session")
def synth_spec() -> gp.storage.SynthSpec:
    return SPEC


@pytest.fixture(scope="session")
def synth_file(tmp_path_factory) -> str:
    """SPEC in the flattened layout: one file, 3 row groups of 200 rows."""
    path = str(tmp_path_factory.mktemp("synth") / "flat.parquet")
    gp.storage.synthesize(path, SPEC, progress=False)
    return path


@pytest.fixture(scope="session")
def synth_map_file(tmp_path_factory) -> str:
    """SPEC in the legacy map layout (with gpupre's layout metadata)."""
    path = str(tmp_path_factory.mktemp("synth") / "map.parquet")
    gp.storage.synthesize(path, SPEC, layout="map", progress=False)
    return path


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> str:
    """SPEC split over 3 files of 4 row groups of 50 rows each: 12 work units."""
    path = str(tmp_path_factory.mktemp("synth") / "parts")
    spec = gp.storage.SynthSpec(**{**SPEC.__dict__, "row_group_rows": 50, "num_files": 3})
    gp.storage.synthesize(path, spec, progress=False)
    return path


@pytest.fixture(scope="session")
def dedup_tables(tmp_path_factory):
    """The same joined requests written by DedupWriter and TabularWriter: (dedup dir, tabular dir)."""
    from dedup_data import joined_requests

    from gpupre.serving import DedupWriter, TabularWriter

    item_schema, user_schema, requests = joined_requests()
    paths = []
    for name, cls in (("dedup", DedupWriter), ("tabular", TabularWriter)):
        path = str(tmp_path_factory.mktemp(name))
        with cls(path, item_schema, user_schema, ("click", "like"), requests_per_file=25, row_group_rows=8) as writer:
            writer.write(requests)
        paths.append(path)
    return tuple(paths)


@pytest.fixture(scope="session")
def image_file(tmp_path_factory) -> str:
    """120 rows of images that spell their row id (tests/image_data.py), 4 row groups of 30."""
    from image_data import write_images

    return write_images(str(tmp_path_factory.mktemp("images") / "images.parquet"), 120, 30)
