"""MongoDB's query language, evaluated in Python.

Backends without a query engine of their own (``file://``, ``s3://``, and ``mongomock://`` where
mongomock is wrong) filter, sort and update documents with this package, so a query means the
same there as on MongoDB. It is organised as MongoDB's server organises it:

* :mod:`~tensorhub.query.values`: BSON type brackets and order (null < numbers < strings <
  objects < arrays < binary < ObjectId < booleans < dates < regexes), equality, ``$type`` names;
* :mod:`~tensorhub.query.paths`: dotted paths walked the way the server's matcher walks them
  (a condition on an array field matches if the array or any element matches; ``{"f": None}``
  matches a missing field);
* :mod:`~tensorhub.query.regexes`: ``$regex`` compiled and searched under one time budget per query;
* :mod:`~tensorhub.query.parse`: a filter checked whole and turned once into a plan, with an
  operator table (name -> builder) rather than if-chains;
* :mod:`~tensorhub.query.match`: :func:`matches`, the plan applied (parsed once per evaluation);
* :mod:`~tensorhub.query.sort`: sort keys as the index key generator derives them (they differ
  from the matcher's paths on purpose);
* :mod:`~tensorhub.query.update`: update documents.

Supported: ``$eq $ne $gt $gte $lt $lte $in $nin $exists $regex $options $not $and $or $nor
$all $size $elemMatch $mod $type``; updates ``$set $unset $inc $push $min $max``. Everything
else, and every malformed argument, raises :class:`~tensorhub.errors.InvalidQueryError` before
any document is tested, on every backend. The differential test in
``tests/test_query_differential.py`` checks this against a MongoDB-wire server.
"""

from tensorhub.query.match import matches, plan_for
from tensorhub.query.parse import OPERATORS, compile_filter, validate_filter
from tensorhub.query.regexes import DEFAULT_REGEX_TIMEOUT, REGEX_TIMEOUT_ENV, regex_budget, regex_time_limit
from tensorhub.query.sort import normalize_sort, sort_documents
from tensorhub.query.update import apply_update, validate_update
from tensorhub.query.values import MISSING, UNDEFINED, compare_values

__all__ = ["matches", "sort_documents", "apply_update", "compare_values", "validate_filter", "validate_update",
           "regex_budget", "REGEX_TIMEOUT_ENV", "DEFAULT_REGEX_TIMEOUT", "regex_time_limit", "normalize_sort",
           "compile_filter", "plan_for", "OPERATORS", "MISSING", "UNDEFINED"]
