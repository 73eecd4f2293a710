"""Type stubs of the compiled module ``fhequant._core`` (checked by mypy.stubtest)."""

__all__ = [
    "__version__",
    "_raise_kernel_error",
]
__version__: str

def _raise_kernel_error(variant: str, context: str | None = None) -> None: ...
