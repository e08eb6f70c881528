//! The protobuf (proto2) messages the sink sends and reads, written from
//! the field tables of the service's `timeseries.proto` and
//! `table_store.proto` (names, numbers and types are what the wire depends
//! on). Only the fields weir uses are declared: decoders skip the others.

#![allow(missing_docs, reason = "the field names are the service's own")]

/// `PutTimeseriesDataRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutTimeseriesDataRequest {
    #[prost(string, required, tag = "1")]
    pub table_name: String,
    #[prost(message, required, tag = "2")]
    pub rows_data: TimeseriesRows,
    #[prost(enumeration = "MetaUpdateMode", optional, tag = "3")]
    pub meta_update_mode: Option<i32>,
    #[prost(int64, optional, tag = "4")]
    pub supported_table_version: Option<i64>,
}

/// `TimeseriesRows`: the FlatBuffer and its checksum.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeseriesRows {
    /// Always serialized, even as 0 (`08 00`): the field is required.
    #[prost(enumeration = "RowsSerializeType", required, tag = "1")]
    pub r#type: i32,
    #[prost(bytes = "vec", required, tag = "2")]
    pub rows_data: Vec<u8>,
    /// CRC-32C of `rows_data`, bit-cast to i32.
    #[prost(int32, optional, tag = "3")]
    pub flatbuffer_crc32c: Option<i32>,
}

/// `RowsSerializeType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum RowsSerializeType {
    RstFlatBuffer = 0,
    RstPlainBuffer = 1,
}

/// `MetaUpdateMode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum MetaUpdateMode {
    MumNormal = 0,
    MumIgnore = 1,
}

/// `PutTimeseriesDataResponse`. A 200 may list rows that failed.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutTimeseriesDataResponse {
    #[prost(message, repeated, tag = "1")]
    pub failed_rows: Vec<FailedRowInfo>,
    #[prost(message, optional, tag = "2")]
    pub meta_update_status: Option<MetaUpdateStatus>,
}

/// `FailedRowInfo`: `row_index` is the row group's index in the request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FailedRowInfo {
    #[prost(int32, required, tag = "1")]
    pub row_index: i32,
    #[prost(string, optional, tag = "2")]
    pub error_code: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub error_message: Option<String>,
}

/// `MetaUpdateStatus`: for each i, request row `row_ids[i]` has its
/// timeseries meta updated at `meta_update_times[i]` (seconds).
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetaUpdateStatus {
    #[prost(uint32, repeated, packed = "false", tag = "1")]
    pub row_ids: Vec<u32>,
    #[prost(uint32, repeated, packed = "false", tag = "2")]
    pub meta_update_times: Vec<u32>,
}

/// `Error`, the body of every non-2xx response.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Error {
    #[prost(string, required, tag = "1")]
    pub code: String,
    #[prost(string, optional, tag = "2")]
    pub message: Option<String>,
}

/// `DescribeTimeseriesTableRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DescribeTimeseriesTableRequest {
    #[prost(string, required, tag = "1")]
    pub table_name: String,
}

/// `DescribeTimeseriesTableResponse` (analytical stores and lastpoint
/// indexes, fields 2 and 3, are skipped).
#[derive(Clone, PartialEq, prost::Message)]
pub struct DescribeTimeseriesTableResponse {
    #[prost(message, optional, tag = "1")]
    pub table_meta: Option<TimeseriesTableMeta>,
}

/// `CreateTimeseriesTableRequest` (no analytical store, no lastpoint index).
#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateTimeseriesTableRequest {
    #[prost(message, required, tag = "1")]
    pub table_meta: TimeseriesTableMeta,
    #[prost(bool, optional, tag = "4")]
    pub enable_analytical_store: Option<bool>,
}

/// `TimeseriesTableMeta`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeseriesTableMeta {
    #[prost(string, required, tag = "1")]
    pub table_name: String,
    #[prost(message, optional, tag = "2")]
    pub table_options: Option<TimeseriesTableOptions>,
    #[prost(string, optional, tag = "3")]
    pub status: Option<String>,
}

/// `TimeseriesTableOptions`: `time_to_live` in seconds, -1 = forever.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeseriesTableOptions {
    #[prost(int32, optional, tag = "1")]
    pub time_to_live: Option<i32>,
}
