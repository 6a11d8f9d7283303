"""Plain-PyTorch references: the tests' oracle and the fallback backend."""
