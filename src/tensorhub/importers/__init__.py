"""Bringing records in from other systems, through the public :class:`~tensorhub.TensorHub` API.

:mod:`~tensorhub.importers.tensorlayer` reads a database written by TensorLayer's ``tl.db.TensorHub``;
:mod:`~tensorhub.importers.restricted_pickle` is the unpickler it uses (numpy arrays, Python
containers and scalars only: a pickle from a database can run no code).
"""
