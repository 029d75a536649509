"""nox sessions: `nox -s tests` (the CI suite), `lint`, `slow`, `notebooks`, `bench`, `gpu`."""

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The fast suite (what CI runs)."""
    session.install("-e", ".[test]")
    session.run("pytest", "-q", *session.posargs)


@nox.session
def gpu(session: nox.Session) -> None:
    """The fast suite on a GPU machine: JAX's default device is the GPU, `gpu` tests run too.

    Installs JAX's CUDA plugin (extra `cuda`); fails if JAX sees no GPU, so a CPU-only run
    cannot pass for a GPU one. `cpu_only` tests are skipped there (tests/conftest.py).
    """
    session.install("-e", ".[test,cuda]")
    session.run("python", "-c", "import jax, sys; sys.exit(jax.default_backend() != 'gpu' and 'JAX sees no GPU')")
    session.run("pytest", "-q", "-m", "not slow", *session.posargs)


@nox.session
def slow(session: nox.Session) -> None:
    """Long-running tests (marked `slow`)."""
    session.install("-e", ".[test]")
    session.run("pytest", "-q", "-m", "slow", *session.posargs)


@nox.session
def notebooks(session: nox.Session) -> None:
    """Execute every notebook top to bottom."""
    session.install("-e", ".[test]")
    session.run("pytest", "-q", "tests/test_notebooks.py", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("-e", ".", "ruff", "import-linter")
    session.run("ruff", "check", "jaxops", "custom_vjp", "tests", "bench", "examples", "notebooks", "noxfile.py")
    session.run("lint-imports")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks (print ratios against plain JAX and PyTorch where installed)."""
    session.install("-e", ".[test]")
    session.run("python", "bench/run.py", *session.posargs)
