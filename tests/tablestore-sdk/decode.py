"""Decodes PutTimeseriesData request bodies with the official Tablestore
Python SDK's own protobuf and FlatBuffers modules, and prints their content
as JSON (one object per body) for tests/tablestore.rs to compare.

Usage: python decode.py BODY_FILE...
"""
import json
import sys

import crc32c
from tablestore.flatbuffer.timeseries.FlatBufferRows import FlatBufferRows
from tablestore.protobuf import timeseries_pb2


def text(b):
    return b.decode("utf-8") if b is not None else None


def decode(body):
    req = timeseries_pb2.PutTimeseriesDataRequest()
    req.ParseFromString(body)
    data = req.rows_data.rows_data
    out = {
        "init_errors": req.FindInitializationErrors(),
        "table": req.table_name,
        "type_set": req.rows_data.HasField("type"),
        "type": req.rows_data.type,
        "crc_ok": req.rows_data.flatbuffer_crc32c
        == (crc32c.crc32c(data) ^ 0x80000000) - 0x80000000,
        "meta_update_mode": req.meta_update_mode if req.HasField("meta_update_mode") else None,
        "supported_table_version": req.supported_table_version
        if req.HasField("supported_table_version")
        else None,
        "groups": [],
    }
    rows = FlatBufferRows.GetRootAs(data, 0)
    for g in range(rows.RowGroupsLength()):
        group = rows.RowGroups(g)
        decoded = {
            "measurement": text(group.MeasurementName()),
            "field_names": [text(group.FieldNames(i)) for i in range(group.FieldNamesLength())],
            "field_types": [group.FieldTypes(i) for i in range(group.FieldTypesLength())],
            "rows": [],
        }
        for r in range(group.RowsLength()):
            row = group.Rows(r)
            values = row.FieldValues()
            decoded["rows"].append(
                {
                    "data_source": text(row.DataSource()),
                    "legacy_tags": text(row.Tags()),
                    "time": row.Time(),
                    "meta_cache_update_time": row.MetaCacheUpdateTime(),
                    "tag_list_present": not row.TagListIsNone(),
                    "tags": [
                        [text(row.TagList(i).Name()), text(row.TagList(i).Value())]
                        for i in range(row.TagListLength())
                    ],
                    "long": None if values.LongValuesIsNone() else [values.LongValues(i) for i in range(values.LongValuesLength())],
                    "bool": None if values.BoolValuesIsNone() else [bool(values.BoolValues(i)) for i in range(values.BoolValuesLength())],
                    "double": None if values.DoubleValuesIsNone() else [values.DoubleValues(i) for i in range(values.DoubleValuesLength())],
                    "string": None if values.StringValuesIsNone() else [text(values.StringValues(i)) for i in range(values.StringValuesLength())],
                    "binary": None
                    if values.BinaryValuesIsNone()
                    else [bytes(values.BinaryValues(i).ValueAsNumpy().astype("uint8")).hex() for i in range(values.BinaryValuesLength())],
                }
            )
        out["groups"].append(decoded)
    return out


def main():
    result = []
    for path in sys.argv[1:]:
        with open(path, "rb") as f:
            result.append(decode(f.read()))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
