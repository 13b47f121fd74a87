"""The gateway's own REST API, ``/v1/…``, beside the frozen NEAR routes: streams, preferences, the
inbox and receipts, for callers that prove what they hold (``signing``)."""
