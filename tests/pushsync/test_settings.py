import pytest

from pushsync.settings import Settings, SettingsError, load_settings, redact_url


def test_defaults_match_the_contract():
    s = load_settings({})
    assert s == Settings()
    assert s.database_url == "sqlite:///pushsync.db"
    assert s.broker_url == "redis://localhost:6379/0"
    assert s.fcm_url == "https://fcm.googleapis.com"
    assert s.apns_production_url == "https://api.push.apple.com:443"
    assert s.apns_sandbox_url == "https://api.sandbox.push.apple.com:443"
    assert s.ca_file is None
    assert s.batch_size == 500


@pytest.mark.parametrize("name,value", [
    ("PUSHSYNC_BROKER_URL", "amqp://guest@localhost//"),
    ("PUSHSYNC_DATABASE_URL", "mysql://root@localhost/x"),
    ("PUSHSYNC_DATABASE_URL", "not a url"),
    ("PUSHSYNC_FCM_URL", "ftp://x"),
    ("PUSHSYNC_APNS_SANDBOX_URL", "https://host:notaport"),
    ("PUSHSYNC_CA_FILE", "/no/such/ca.pem"),
    ("PUSHSYNC_BATCH_SIZE", "0"),
    ("PUSHSYNC_BATCH_SIZE", "many"),
])
def test_bad_value_names_the_variable(name, value):
    with pytest.raises(SettingsError) as err:
        load_settings({name: value})
    assert str(err.value).startswith(name + ":")


def test_redacted_view_hides_passwords():
    s = load_settings({"PUSHSYNC_BROKER_URL": "redis://:s3cret@redis:6379/0",
                       "PUSHSYNC_DATABASE_URL": "postgresql://app:hunter2@db/pushsync"})
    shown = str(s.redacted())
    assert "s3cret" not in shown and "hunter2" not in shown
    assert "redis://:***@redis:6379/0" in shown
    assert redact_url("redis://localhost:6379/0") == "redis://localhost:6379/0"
    # a URL with nothing to hide comes back as it was (an absolute SQLite path keeps its four slashes)
    assert redact_url("sqlite:////var/lib/pushsync/store.db") == "sqlite:////var/lib/pushsync/store.db"
    assert redact_url("sqlite:////srv/s.db?password=x") == "sqlite:////srv/s.db?password=***"


def test_passwords_in_a_urls_query_string_are_hidden_too():
    """libpq and redis-py both take a password from the query string: the start-up line (the
    redacted settings) and every error that quotes a URL must not show it."""
    s = load_settings({"PUSHSYNC_BROKER_URL": "redis://redis:6379/0?password=s3cret&socket_timeout=5",
                       "PUSHSYNC_DATABASE_URL": "postgresql://app@db/pushsync?sslmode=require&password=hun%20ter2"
                                                "&sslpassword=k3y"})
    shown = str(s.redacted())
    assert "s3cret" not in shown and "hun%20ter2" not in shown and "k3y" not in shown
    assert "redis://redis:6379/0?password=***&socket_timeout=5" in shown
    assert "postgresql://app@db/pushsync?sslmode=require&password=***&sslpassword=***" in shown
    assert redact_url("sentinel://:pw@a:26379;sentinel://b:26379?sentinel_password=x") == (
        "sentinel://:***@a:26379;sentinel://b:26379?sentinel_password=***")
    assert redact_url("redis://[::1:6379?password=s3cret") == "<unparsable URL>"


def test_urls_lose_trailing_slash():
    assert load_settings({"PUSHSYNC_FCM_URL": "https://127.0.0.1:9443/"}).fcm_url == "https://127.0.0.1:9443"


def test_visibility_timeout_must_outlast_the_task_time_limit():
    with pytest.raises(SettingsError, match="^PUSHSYNC_VISIBILITY_TIMEOUT:"):
        load_settings({"PUSHSYNC_TASK_TIME_LIMIT": "60", "PUSHSYNC_VISIBILITY_TIMEOUT": "60"})
    s = load_settings({"PUSHSYNC_TASK_TIME_LIMIT": "10", "PUSHSYNC_VISIBILITY_TIMEOUT": "15"})
    assert (s.task_time_limit, s.visibility_timeout) == (10, 15)


def test_retry_cap_below_base_is_refused():
    with pytest.raises(SettingsError, match="^PUSHSYNC_RETRY_CAP:"):
        load_settings({"PUSHSYNC_RETRY_BASE": "10", "PUSHSYNC_RETRY_CAP": "1"})


@pytest.mark.parametrize("var", ["PUSHSYNC_FCM_URL", "PUSHSYNC_APNS_PRODUCTION_URL", "PUSHSYNC_APNS_SANDBOX_URL"])
def test_plain_http_push_endpoints_are_refused_unless_development_allows_them(var):
    with pytest.raises(SettingsError, match=f"{var}: must be an https://"):
        load_settings({var: "http://127.0.0.1:9000"})
    s = load_settings({var: "http://127.0.0.1:9000", "PUSHSYNC_ALLOW_INSECURE_ENDPOINTS": "true"})
    assert s.allow_insecure_endpoints is True
    with pytest.raises(SettingsError, match="PUSHSYNC_ALLOW_INSECURE_ENDPOINTS"):
        load_settings({"PUSHSYNC_ALLOW_INSECURE_ENDPOINTS": "perhaps"})


def test_publish_timeout_and_message_limit_have_defaults_and_bounds():
    s = load_settings({})
    assert (s.publish_timeout, s.max_events_per_message) == (20.0, 1000)
    with pytest.raises(SettingsError, match="PUSHSYNC_MAX_EVENTS_PER_MESSAGE"):
        load_settings({"PUSHSYNC_MAX_EVENTS_PER_MESSAGE": "0"})


def test_sentinel_broker_urls_are_parsed_with_the_masters_password_and_database():
    from pushsync.broker import parse_sentinel_url, transport_options

    url = "sentinel://:pa%40ss@s1:26379/2; sentinel://s2:26380;sentinel://s3:26381"
    s = load_settings({"PUSHSYNC_BROKER_URL": url, "PUSHSYNC_SENTINEL_MASTER": "pushsync"})
    addr = parse_sentinel_url(s.broker_url)
    assert addr.sentinels == (("s1", 26379), ("s2", 26380), ("s3", 26381))
    assert (addr.password, addr.db) == ("pa@ss", 2)
    assert transport_options(s)["master_name"] == "pushsync"
    assert "master_name" not in transport_options(load_settings({}))  # a redis:// URL: the bounds alone
    assert load_settings({}).sentinel_master == "mymaster"
    shown = str(s.redacted())
    assert "pa%40ss" not in shown and "sentinel://:***@s1:26379/2" in shown
    # a stray leading ";" does not move the password and database off the first address
    lead = parse_sentinel_url(";" + url)
    assert (lead.password, lead.db, lead.sentinels[0]) == ("pa@ss", 2, ("s1", 26379))


@pytest.mark.parametrize("value,says", [
    ("sentinel://s1:26379;redis://s2:6379", "address 2 is not sentinel://"),
    ("sentinel://s1", "needs a host and a port"),
    ("sentinel://s1:notaport", "bad port"),
    ("sentinel://s1:26379/zero", "database must be a number"),
    ("sentinel://:change-me@s1:26379", "placeholder"),
])
def test_bad_sentinel_urls_are_refused_naming_the_variable_without_the_password(value, says):
    with pytest.raises(SettingsError) as err:
        load_settings({"PUSHSYNC_BROKER_URL": value})
    assert str(err.value).startswith("PUSHSYNC_BROKER_URL:") and says in str(err.value)
    assert "change-me" not in str(err.value)


def test_a_master_name_with_spaces_is_refused():
    with pytest.raises(SettingsError, match="PUSHSYNC_SENTINEL_MASTER"):
        load_settings({"PUSHSYNC_SENTINEL_MASTER": "my master"})


@pytest.mark.parametrize("url,expected", [
    ("redis://redis:6379/0", "redis://:p%40ss%3Aw@redis:6379/0"),
    ("redis://:own@redis:6379/0", "redis://:own@redis:6379/0"),  # the URL's own password wins
    ("sentinel://s1:26379;sentinel://s2:26379", "sentinel://:p%40ss%3Aw@s1:26379;sentinel://s2:26379"),
])
def test_the_broker_password_goes_into_the_first_address_and_is_never_shown(url, expected):
    from pushsync.broker import broker_url, parse_sentinel_url

    s = load_settings({"PUSHSYNC_BROKER_URL": url, "PUSHSYNC_BROKER_PASSWORD": "p@ss:w"})
    assert broker_url(s) == expected
    if url.startswith("sentinel"):
        assert parse_sentinel_url(broker_url(s)).password == "p@ss:w"
    assert "p@ss" not in str(s.redacted())
    with pytest.raises(SettingsError, match="PUSHSYNC_BROKER_PASSWORD"):
        load_settings({"PUSHSYNC_BROKER_PASSWORD": "change-me-please"})


def test_the_apns_transport_is_one_of_the_two():
    assert load_settings({}).apns_transport == "curl"
    assert load_settings({"PUSHSYNC_APNS_TRANSPORT": "aioapns"}).apns_transport == "aioapns"
    with pytest.raises(SettingsError, match="PUSHSYNC_APNS_TRANSPORT: expected one of aioapns, curl, got 'hyper'"):
        load_settings({"PUSHSYNC_APNS_TRANSPORT": "hyper"})


def test_the_fcm_transport_is_one_of_the_two():
    assert load_settings({}).fcm_transport == "curl"
    assert load_settings({"PUSHSYNC_FCM_TRANSPORT": "aiohttp"}).fcm_transport == "aiohttp"
    with pytest.raises(SettingsError, match="PUSHSYNC_FCM_TRANSPORT: expected one of aiohttp, curl, got 'aioapns'"):
        load_settings({"PUSHSYNC_FCM_TRANSPORT": "aioapns"})


def test_every_setting_is_on_the_generated_settings_page():
    """An operator learns the settings from the docs' settings reference, which docs/hooks.py
    generates at build time: every setting the code reads is on it, with its default."""
    import importlib.util
    from dataclasses import fields
    from pathlib import Path

    from pushsync.settings import _VARS, Settings

    spec = importlib.util.spec_from_file_location("docs_hooks", Path(__file__).parents[2] / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    rows = {line.split("`")[1]: line for line in hooks.settings_markdown().splitlines()
            if line.startswith("| `PUSHSYNC_")}
    assert set(_VARS) - set(rows) == set()
    defaults = {f.name: f.default for f in fields(Settings)}
    assert "| `120` |" in rows["PUSHSYNC_VISIBILITY_TIMEOUT"] and defaults["visibility_timeout"] == 120
    assert "| `sqlite:///pushsync.db` |" in rows["PUSHSYNC_DATABASE_URL"]
    assert "| unset |" in rows["PUSHSYNC_SECRET_KEY"]
