"""Background jobs run by RQ workers: plain functions that take ids, never secrets."""
