"""Doctest collection over picorag/ imports every module; skip the optional LangChain adapter when
langchain-core is not installed (its tests skip themselves)."""

try:
    import langchain_core  # noqa: F401
except ImportError:
    collect_ignore = ["picorag/langchain.py"]
