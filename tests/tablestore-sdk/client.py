"""Writes rows to a Tablestore endpoint with the official Python SDK's
OTSClient, and prints what happened as JSON, for tests/tablestore.rs.

Usage: python client.py ENDPOINT KEY_ID SECRET INSTANCE TABLE REGION|- ROWS_JSON
ROWS_JSON: [{"measurement", "data_source", "tags": {}, "fields": {}, "time"}]
Field values: JSON numbers, booleans and strings; {"binary": "<hex>"} is
BINARY (a bytearray).
"""
import json
import logging
import sys
import warnings

warnings.filterwarnings("ignore")
logging.disable(logging.CRITICAL)

from tablestore import OTSClient  # noqa: E402
from tablestore.error import OTSClientError, OTSServiceError  # noqa: E402
from tablestore.metadata import TimeseriesKey, TimeseriesRow  # noqa: E402
from tablestore.retry import NoRetryPolicy  # noqa: E402


def value(v):
    if isinstance(v, dict) and "binary" in v:
        return bytearray(bytes.fromhex(v["binary"]))
    return v


def main():
    endpoint, key_id, secret, instance, table, region, rows = sys.argv[1:8]
    # One attempt: the test decides what a failure means.
    kwargs = {"retry_policy": NoRetryPolicy()}
    if region != "-":
        kwargs["region"] = region
    client = OTSClient(endpoint, key_id, secret, instance, **kwargs)
    out = {}
    try:
        series = []
        for r in json.loads(rows):
            key = TimeseriesKey(r["measurement"], r["data_source"], r["tags"])
            fields = {k: value(v) for k, v in r["fields"].items()}
            series.append(TimeseriesRow(key, fields, r["time"]))
        client.put_timeseries_data(table, series)
        out["ok"] = True
    except OTSServiceError as e:
        out = {"ok": False, "kind": "service", "status": e.get_http_status(), "code": e.get_error_code(), "message": e.get_error_message(), "request_id": e.get_request_id()}
    except OTSClientError as e:
        out = {"ok": False, "kind": "client", "message": e.get_error_message()}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
