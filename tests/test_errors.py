"""The exception hierarchy."""

import pytest

import gpupre as gp


@pytest.mark.parametrize(
    "cls", [gp.SchemaError, gp.DataError, gp.ConfigError, gp.BackendUnavailable, gp.KernelError]
)
def test_every_error_is_a_gpupre_error(cls):
    assert issubclass(cls, gp.GpupreError) and cls is not gp.GpupreError
    with pytest.raises(gp.GpupreError, match="the message"):
        raise cls("the message")


def test_error_classes_are_distinct():
    classes = [gp.SchemaError, gp.DataError, gp.ConfigError, gp.BackendUnavailable, gp.KernelError]
    for a in classes:
        assert [b for b in classes if issubclass(a, b)] == [a]
