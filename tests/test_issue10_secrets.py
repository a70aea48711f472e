"""Issue 10, item 4: no URI secret (password, secret option) is ever shown.

Not in ``str``/``repr`` of a hub, a store's ``uri``, ``repr`` of a :class:`Connection`, the
errors raised for bad URIs (nor their chained causes), log records or CLI output; while a task's
process still gets the real URI.
"""

from __future__ import annotations

import logging
import re
import traceback
import uuid
from urllib.parse import quote

import numpy as np
import pymongo
import pytest
from click.testing import CliRunner
from conftest import S3_BUCKET

from tensorhub import TensorHub, registry
from tensorhub.backends import s3 as s3_backend
from tensorhub.cli import main
from tensorhub.context import ENV_URI, Connection
from tensorhub.errors import BackendUnavailableError, ConfigurationError
from tensorhub.redaction import redact_uri


def _pieces(secret: str) -> set[str]:
    """The secret as written and encoded, and each run of 3+ letters/digits in it (no partial leak)."""
    return {secret, quote(secret, safe=""), *(p for p in re.split(r"[^A-Za-z0-9]+", secret) if len(p) >= 3)}


def _assert_hidden(text: str, *secrets: str) -> None:
    for secret in secrets:
        for piece in _pieces(secret):
            assert piece not in text, f"{piece!r} (of the secret {secret!r}) is shown in {text!r}"


def _printed(exc: BaseException) -> str:
    """What printing ``exc`` shows of it and the exceptions it chains (not the source lines)."""
    texts, current, seen = [], exc, 0
    while current is not None and seen < 20:
        texts.append("".join(traceback.format_exception_only(type(current), current)))
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
        seen += 1
    return "\n".join(texts)


def _enc(secret: str) -> str:
    return quote(secret, safe="")


# (URI, its secrets, a part that must still be shown)
MATRIX = [
    # MongoDB passwords with every delimiter, percent-encoded as RFC 3986 wants (pymongo reads them)
    *[(f"mongodb://user:{_enc(pw)}@db.example:27017/app", [pw], "user:***@db.example:27017/app")
      for pw in ("PWa#PWb", "PWa@PWb", "PWa:PWb", "PWa/PWb", "PWa%PWb", "PWa?PWb", "PWa PWb+PWc&PWd")],
    # a raw '#', which pymongo accepts (urllib takes it for a fragment)
    ("mongodb://user:PWa#PWb@db.example/app", ["PWa#PWb"], "user:***@db.example/app"),
    ("mongodb://user:PWa#PWb@h1:1,h2:2/app?replicaSet=rs", ["PWa#PWb"], "@h1:1,h2:2/app?replicaSet=rs"),
    # raw delimiters pymongo refuses: still meant as a secret
    ("mongodb://user:PWa/PWb@db.example/app", ["PWa/PWb"], "db.example/app"),
    ("mongodb://user:PWa?PWb@db.example/app", ["PWa?PWb"], "db.example/app"),
    ("mongodb://user:PWa@PWb@db.example/app", ["PWa@PWb"], "db.example/app"),
    ("mongodb://user:PWa:PWb@db.example/app", ["PWa:PWb"], "db.example/app"),
    ("mongodb://user:PWa%PWb@db.example/app", ["PWa%PWb"], "db.example/app"),
    ("mongodb://user:1234?5678@db.example/app", ["1234?5678"], "db.example/app"),
    ("mongodb+srv://user:PWa%23PWb@cluster0.example.net/app?retryWrites=true", ["PWa#PWb"],
     "cluster0.example.net/app?retryWrites=true"),
    # secret options, in any case, percent-encoded, with ';' separators
    ("mongodb://db.example/app?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:TOKa/TOKb+c=",
     ["TOKa/TOKb+c="], "authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:***"),
    ("mongodb://db.example/app?authMechanismProperties=SERVICE_NAME:mongodb,AWS_SESSION_TOKEN:TOKa",
     ["TOKa"], "SERVICE_NAME:mongodb,AWS_SESSION_TOKEN:***"),
    ("mongodb://db.example/app?AUTHMECHANISMPROPERTIES=AWS_SESSION_TOKEN%3ATOKa", ["TOKa"], "db.example/app?"),
    ("mongodb://db.example/app?tls=true&tlsCertificateKeyFilePassword=PWa-PWb", ["PWa-PWb"], "tls=true"),
    ("mongodb://db.example/app?TLSCERTIFICATEKEYFILEPASSWORD=PWa-PWb", ["PWa-PWb"], "db.example/app"),
    ("mongodb://db.example/app?tlsCertificateKeyFile%50assword=PWa-PWb", ["PWa-PWb"], "db.example/app"),
    ("mongodb://db.example/app?w=1;password=PWa-PWb;appName=me", ["PWa-PWb"], "w=1;password=***;appName=me"),
    # s3:// credentials in the query (names in any case, percent-encoded) and in the user info
    ("s3://bkt/p?endpoint_url=http://127.0.0.1:9000&aws_secret_access_key=SKa/SKb+SKc&aws_session_token=TOKa",
     ["SKa/SKb+SKc", "TOKa"], "endpoint_url=http://127.0.0.1:9000"),
    ("s3://bkt/p?AWS_SECRET_ACCESS_KEY=SKa-SKb", ["SKa-SKb"], "s3://bkt/p?AWS_SECRET_ACCESS_KEY=***"),
    ("s3://bkt/p?aws%5Fsecret%5Faccess%5Fkey=SKa-SKb", ["SKa-SKb"], "s3://bkt/p?"),
    ("s3://bkt/p?Aws_Session_Token=TOKa-TOKb&region=eu-west-1", ["TOKa-TOKb"], "region=eu-west-1"),
    ("s3://AKIDEXAMPLE:SKa%2FSKb@bkt/p", ["SKa/SKb"], "s3://AKIDEXAMPLE:***@bkt/p"),
    ("s3://AKIDEXAMPLE:SKa/SKb@bkt/p", ["SKa/SKb"], "bkt/p"),
    ("s3://AKIDEXAMPLE:SKa#SKb@bkt/p", ["SKa#SKb"], "bkt/p"),
    ("s3://bkt/p?SKa-SKb", ["SKa-SKb"], "s3://bkt/p?"),
    # user info in file:// and mongomock:// URIs
    ("file://user:PWa-PWb@host/store", ["PWa-PWb"], "file://user:***@host/store"),
    ("file://user:PWa%40PWb@host/store", ["PWa@PWb"], "@host/store"),
    ("mongomock://user:PWa-PWb@name", ["PWa-PWb"], "mongomock://user:***@name"),
]


@pytest.mark.parametrize(("uri", "secrets", "kept"), MATRIX, ids=[m[0] for m in MATRIX])
def test_item04_redact_uri_hides_every_form_of_secret(uri: str, secrets: list[str], kept: str) -> None:
    shown = redact_uri(uri)
    _assert_hidden(shown, *secrets)
    assert kept in shown
    assert registry.redact(uri) == s3_backend.redact_uri(uri) == shown  # one function everywhere


@pytest.mark.parametrize("uri", [f"mongodb://user:{_enc('PWa#PWb')}@db.example/app", "mongodb://user:PWa#PWb@db/app",
                                 f"mongodb://user:{_enc('PWa/@:?%PWb')}@db.example/app"])
def test_item04_the_matrix_passwords_are_what_pymongo_reads(uri: str) -> None:
    """The redacted password is the one the driver uses (the matrix tests real secrets)."""
    password = pymongo.uri_parser.parse_uri(uri)["password"]
    assert password.startswith("PWa") and password.endswith("PWb")
    _assert_hidden(redact_uri(uri), password)


@pytest.mark.parametrize("uri", [
    "file:///data/a:b@c/hub", "file://./tensorhub-data", "/plain/path", "mongomock://",
    "mongodb://h1:27017,h2:27018/db?replicaSet=rs&appName=me@example&readPreference=secondary",
    "mongodb://[::1]:27017/db", "mongodb://%2Ftmp%2Fmongodb-27017.sock/db",
    "s3://bkt/a/b?endpoint_url=http://127.0.0.1:9000&region=us-east-1&aws_access_key_id=AKIDEXAMPLE",
])
def test_item04_uris_without_secrets_are_shown_whole(uri: str) -> None:
    assert redact_uri(uri) == uri


def _check_shown(hub: TensorHub, caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    for text in (str(hub), repr(hub), hub.index.uri, hub.blobs.uri, repr(hub.connection), str(hub.connection)):
        _assert_hidden(text, *secrets)
    for record in caplog.records:
        _assert_hidden(record.getMessage(), *secrets)


@pytest.fixture
def mongodb_user(mongodb_base: str) -> tuple[str, str, str]:
    """``(host:port, database, user)`` of a fresh database with a user whose password is PASSWORD."""
    database = f"secrets_{uuid.uuid4().hex[:8]}"
    with pymongo.MongoClient(mongodb_base) as client:
        client[database].command("createUser", "alice", pwd=PASSWORD, roles=["readWrite"])
    return mongodb_base.split("://", 1)[1], database, "alice"


PASSWORD = "PWa#PWb/PWc@PWd:PWe?PWf%PWg"


def test_item04_mongodb_hub_with_a_hash_password_shows_no_secret(mongodb_user, caplog, tmp_path) -> None:
    host, database, user = mongodb_user
    raw_hash = PASSWORD.replace("/", "%2F").replace("@", "%40").replace(":", "%3A").replace("?", "%3F") \
        .replace("%PWg", "%25PWg")  # every delimiter encoded but '#', which pymongo reads raw
    token = "TOKa-TOKb-TOKc"
    script = tmp_path / "child.py"
    script.write_text("import numpy as np\nfrom tensorhub import TensorHub\n"
                      "with TensorHub() as hub:\n    hub.save_dataset(np.arange(3), 'from-task')\n")
    for uri in (f"mongodb://{user}:{raw_hash}@{host}/{database}",
                f"mongodb://{user}:{_enc(PASSWORD)}@{host}/{database}?authSource={database}"
                f"&authMechanismProperties=AWS_SESSION_TOKEN:{token}"):
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="tensorhub"):
            with TensorHub(uri, project_name="p") as hub:
                assert hub.index.db.name == database  # the database pymongo parsed, not urllib's guess
                _check_shown(hub, caplog, PASSWORD, token)
                # a task's process gets the real URI: it authenticates with the password
                assert hub.connection.uri == uri and hub.connection.environ()[ENV_URI] == uri
                hub.delete_datasets()
                hub.create_task("child", script)
                assert hub.run_task("child")
                assert hub.find_tasks("child")[0]["status"] == "finished"
                assert np.array_equal(hub.find_dataset("from-task"), np.arange(3))
                hub.delete_tasks()
            for record in caplog.records:
                _assert_hidden(record.getMessage() + (record.exc_text or ""), PASSWORD, token)
        result = CliRunner().invoke(main, ["ls", "tasks", "--uri", uri, "-p", "nobody"])
        assert result.exit_code == 0, result.output
        assert "nobody" in result.output
        _assert_hidden(result.output, PASSWORD, token)


def test_item04_s3_hub_with_credentials_in_the_uri_shows_no_secret(s3_base: str, caplog) -> None:
    secret, token = "SKa/SKb+SKc", "TOKa-TOKb"
    prefix = uuid.uuid4().hex[:8]
    uris = [f"s3://{S3_BUCKET}/{prefix}a?endpoint_url={s3_base}&aws_access_key_id=testing"
            f"&aws%5Fsecret%5Faccess%5Fkey={_enc(secret)}&aws_session_token={token}",
            f"s3://testing:{_enc(secret)}@{S3_BUCKET}/{prefix}b?endpoint_url={s3_base}"]
    for uri in uris:
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="tensorhub"), TensorHub(uri, project_name="p") as hub:
            hub.save_dataset(np.arange(4), "d")
            assert np.array_equal(hub.find_dataset("d"), np.arange(4))
            _check_shown(hub, caplog, secret, token)
            hub.delete_datasets()
    with caplog.at_level(logging.DEBUG, logger="tensorhub"), \
            TensorHub(f"mongomock://{prefix}", project_name="p",  # blobs= elsewhere (a store of its own:
                      blobs=uris[0].replace(f"/{prefix}a?", f"/{prefix}c?")) as hub:  # one index per blob store)
        _check_shown(hub, caplog, secret, token)


def test_item04_file_and_mongomock_hubs_hide_user_info(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.chdir(tmp_path)
    for uri in ("file://user:PWa-PWb@host/store", "mongomock://user:PWa-PWb@name"):
        with caplog.at_level(logging.DEBUG, logger="tensorhub"), TensorHub(uri, project_name="p") as hub:
            hub.save_dataset(np.arange(2), "d")
            _check_shown(hub, caplog, "PWa-PWb")
            assert hub.connection.uri == uri


def test_item04_file_task_in_process_opens_the_real_store(tmp_path, monkeypatch) -> None:
    """The URI a task gets is the real one: redacted, ``user:***@host`` would be another directory."""
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "child.py"
    script.write_text("import numpy as np\nfrom tensorhub import TensorHub\n"
                      "TensorHub().save_dataset(np.arange(3), 'from-task')\n")
    with TensorHub("file://user:PWa-PWb@host/store", project_name="p") as hub:
        hub.create_task("t", script)
        assert hub.run_task("t", in_process=True)
        assert hub.find_dataset("from-task") is not None


def test_item04_connection_repr_hides_passwords_and_keeps_them_for_tasks() -> None:
    uri, blobs = "mongodb://u:PWa#PWb@h/db", "s3://bkt/p?AWS_SECRET_ACCESS_KEY=SKa-SKb"
    connection = Connection(uri, blobs, "p")
    _assert_hidden(repr(connection) + str(connection), "PWa#PWb", "SKa-SKb")
    assert "Connection(uri='mongodb://u:***@h/db'" in repr(connection)
    assert connection.uri == uri and connection.environ()["TENSORHUB_BLOBS_URI"] == blobs


BAD_URIS = [
    # s3: an option name in the wrong case, a bare secret, percent-encoded unknown names
    ("s3://bkt/p?AWS_SECRET_ACCESS_KEY=SKa-SKb", "SKa-SKb", "unknown s3:// option"),
    ("s3://bkt/p?region=x&SKa-SKb", "SKa-SKb", "unknown s3:// option"),
    ("s3://bkt/p?aws%5Fsecret%5Fkey=SKa-SKb&aws_session_token=TOKa-TOKb", "SKa-SKb", "unknown s3:// option"),
    # mongodb: passwords with raw delimiters pymongo refuses, options it refuses
    ("mongodb://u:PWa/PWb@127.0.0.1:9/db", "PWa/PWb", "invalid MongoDB URI"),
    ("mongodb://u:PWa?PWb@127.0.0.1:9/db", "PWa?PWb", "invalid MongoDB URI"),
    ("mongodb://u:PWa@PWb@127.0.0.1:9/db", "PWa@PWb", "escaped"),
    ("mongodb://u:PWa%PWb@127.0.0.1:9/db", "PWa%PWb", "escaped"),
    ("mongodb://u:PWa-PWb@127.0.0.1:9/db?authMechanism=MONGODB-X509", "PWa-PWb", "X509"),
    ("mongodb://u:PWa-PWb@127.0.0.1:9/db?authSource=&authMechanismProperties=AWS_SESSION_TOKEN:TOKa",
     "PWa-PWb", "authSource"),
    ("mongodb+srv://u:PWa-PWb@cluster0.example.net:27017/db", "PWa-PWb", "port"),
]


@pytest.mark.parametrize(("uri", "secret", "says"), BAD_URIS, ids=[b[0] for b in BAD_URIS])
def test_item04_errors_for_bad_uris_show_no_secret(uri: str, secret: str, says: str, caplog) -> None:
    with caplog.at_level(logging.DEBUG, logger="tensorhub"), pytest.raises(ConfigurationError) as info:
        TensorHub(uri, project_name="p")
    assert says in str(info.value)
    _assert_hidden(_printed(info.value), secret, "TOKa")
    for record in caplog.records:
        _assert_hidden(record.getMessage(), secret)


def test_item04_a_uri_that_is_not_a_string_is_not_echoed() -> None:
    with pytest.raises(ConfigurationError) as info:
        registry.open_stores(b"mongodb://u:PWa-PWb@h/db")  # type: ignore[arg-type]
    _assert_hidden(str(info.value), "PWa-PWb")


def test_item04_any_backend_error_that_quotes_the_uri_is_scrubbed(monkeypatch) -> None:
    """The registry's last line of defence, for third-party backends that echo their URI."""
    def leaky(uri: str, **_: object) -> registry.Stores:
        try:
            raise RuntimeError(f"driver could not parse {uri}")
        except RuntimeError as exc:
            raise BackendUnavailableError(f"cannot reach {uri}") from exc

    def leaky_plain(uri: str, **_: object) -> registry.Stores:
        raise RuntimeError(f"driver could not parse {uri}")

    monkeypatch.setitem(registry._registered, "leaky", registry._Entry(leaky))
    monkeypatch.setitem(registry._registered, "leakier", registry._Entry(leaky_plain))
    with pytest.raises(BackendUnavailableError, match="cannot reach leaky://u:\\*\\*\\*@h") as info:
        registry.open_stores("leaky://u:PWa-PWb@h/x?token=TOKa-TOKb")
    _assert_hidden(_printed(info.value), "PWa-PWb", "TOKa-TOKb")
    with pytest.raises(ConfigurationError, match="RuntimeError") as info:
        registry.open_stores("leakier://u:PWa-PWb@h/x")
    _assert_hidden(_printed(info.value), "PWa-PWb")
