"""The store fixtures of the contract module, for the other contract modules here."""

from tests.stores.test_contract import kind, make_store, store  # noqa: F401 - fixtures
