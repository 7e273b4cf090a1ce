"""The package version (one place; the package, reports and DICOM writers read it)."""

__version__ = "0.2.0"
