"""What the Django and Flask backends share: the entry codec, settings from options, and
the SyncCache deadline (no network)."""

from __future__ import annotations

import logging
import pickle

import pytest

from pitchey_cache import ConfigError, Settings
from pitchey_cache.contrib._backend import (
    MISSING,
    EntryCodec,
    Serializer,
    settings_from_options,
    shared_sync_cache,
)
from pitchey_cache.serialization import decode, encode
from pitchey_cache.sync import SyncCache, call_deadline

pytestmark = pytest.mark.unit


def stored(codec: EntryCodec, value: object) -> object:
    """What the Cache would hand back after storing ``codec.dump(value)``."""
    return decode(encode(codec.dump(value)))


@pytest.mark.parametrize("serializer", list(Serializer))
@pytest.mark.parametrize("value", [None, 0, 7, "text", [1, "a"], {"k": [True]}, b"\x00raw"])
def test_json_values_and_bytes_round_trip_in_both_modes(
    serializer: Serializer, value: object
) -> None:
    codec = EntryCodec(serializer, framework="Test")
    assert codec.load(stored(codec, value)) == value


def test_integers_stay_plain_integers_so_incr_works() -> None:
    codec = EntryCodec(Serializer.PICKLE, framework="Test")
    assert encode(codec.dump(41)) == b"41"


def test_pickle_mode_pickles_what_json_cannot_hold(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "pitchey_cache"):
        codec = EntryCodec(Serializer.PICKLE, framework="Test")
    assert "can run code in this process" in caplog.text
    for value in [(1, 2), {1: "int key"}, {"set": {1, 2}}]:
        assert codec.load(stored(codec, value)) == value


def test_a_json_reader_treats_a_pickle_as_a_miss(caplog: pytest.LogCaptureFixture) -> None:
    writer = EntryCodec(Serializer.PICKLE, framework="Test")
    reader = EntryCodec(Serializer.JSON, framework="Test")
    entry = stored(writer, (1, 2))
    with caplog.at_level(logging.WARNING, "pitchey_cache"):
        assert reader.load(entry) is MISSING
        assert reader.load(entry) is MISSING
    assert reader.refused == 2
    assert caplog.text.count("will not load") == 1  # said once, counted always


def test_bytes_of_unknown_format_are_a_miss() -> None:
    codec = EntryCodec(Serializer.PICKLE, framework="Test")
    assert codec.load(b"?" + pickle.dumps(1)) is MISSING
    assert codec.load(b"") is MISSING


def test_the_serializer_is_named_when_wrong() -> None:
    with pytest.raises(ConfigError, match=r"OPTIONS\['SERIALIZER'\] 'yaml': expected"):
        Serializer.parse("OPTIONS['SERIALIZER']", "yaml")
    assert Serializer.parse("x", " Pickle ") is Serializer.PICKLE


def test_options_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_HOST", "from-env")
    monkeypatch.setenv("REDIS_PORT", "6390")
    settings = settings_from_options(
        {"REDIS_HOST": "from-options", "REDIS_CLUSTER_ENABLED": False}, where="OPTIONS"
    )
    assert settings.redis_host == "from-options"
    assert settings.redis_port == 6390
    with pytest.raises(ConfigError, match=r"OPTIONS\['REDIS_PROT'\]"):
        settings_from_options({"REDIS_PROT": 1}, where="OPTIONS")


def test_one_sync_cache_per_configuration() -> None:
    a = shared_sync_cache(Settings(key_prefix="unit-a"))
    assert shared_sync_cache(Settings(key_prefix="unit-a")) is a
    assert shared_sync_cache(Settings(key_prefix="unit-b")) is not a


def test_the_call_deadline_covers_the_routers_own_bound() -> None:
    settings = Settings()  # native-redis + in-memory, the guide's defaults
    assert call_deadline(settings) == 2 * 4 * (3.0 + 1.0) + 5.0
    assert SyncCache(settings).call_timeout == call_deadline(settings)
    assert SyncCache(settings, call_timeout=2).call_timeout == 2
