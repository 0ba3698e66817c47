//! weft-tests: shared harness for weft's integration tests (simulator, lab namespaces).
