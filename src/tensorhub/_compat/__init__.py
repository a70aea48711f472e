"""One module per dependency whose private API tensorhub relies on, and nothing else.

Each module isolates the private names behind a few small functions and says in its docstring
which private API it uses, the versions it was checked against and what breaks if it changes;
``tests/test_issue11_structure.py`` (mongomock, botocore) and ``tests/test_compat_torch.py``
(torch) have a test per private API that fails loudly when the dependency changes. Modules
import their dependency on first import of the module (``torch`` only inside its functions), so
importing this package imports nothing optional.
"""
