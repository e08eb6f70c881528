//! The server's own view of the protobuf messages, written from the
//! service's field tables. Fields the service requires are `Option`s here,
//! so that a missing one is told apart from a zero.

#![allow(missing_docs, reason = "the field names are the service's own")]

#[derive(Clone, PartialEq, prost::Message)]
pub struct PutTimeseriesDataRequest {
    #[prost(string, optional, tag = "1")]
    pub table_name: Option<String>,
    #[prost(message, optional, tag = "2")]
    pub rows_data: Option<TimeseriesRows>,
    #[prost(int32, optional, tag = "3")]
    pub meta_update_mode: Option<i32>,
    #[prost(int64, optional, tag = "4")]
    pub supported_table_version: Option<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeseriesRows {
    #[prost(int32, optional, tag = "1")]
    pub r#type: Option<i32>,
    #[prost(bytes = "vec", optional, tag = "2")]
    pub rows_data: Option<Vec<u8>>,
    #[prost(int32, optional, tag = "3")]
    pub flatbuffer_crc32c: Option<i32>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PutTimeseriesDataResponse {
    #[prost(message, repeated, tag = "1")]
    pub failed_rows: Vec<FailedRowInfo>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct FailedRowInfo {
    #[prost(int32, required, tag = "1")]
    pub row_index: i32,
    #[prost(string, optional, tag = "2")]
    pub error_code: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub error_message: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Error {
    #[prost(string, required, tag = "1")]
    pub code: String,
    #[prost(string, optional, tag = "2")]
    pub message: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TableNameRequest {
    #[prost(string, optional, tag = "1")]
    pub table_name: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateTimeseriesTableRequest {
    #[prost(message, optional, tag = "1")]
    pub table_meta: Option<TimeseriesTableMeta>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DescribeTimeseriesTableResponse {
    #[prost(message, required, tag = "1")]
    pub table_meta: TimeseriesTableMeta,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListTimeseriesTableResponse {
    #[prost(message, repeated, tag = "1")]
    pub table_metas: Vec<TimeseriesTableMeta>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeseriesTableMeta {
    #[prost(string, optional, tag = "1")]
    pub table_name: Option<String>,
    #[prost(message, optional, tag = "2")]
    pub table_options: Option<TimeseriesTableOptions>,
    #[prost(string, optional, tag = "3")]
    pub status: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeseriesTableOptions {
    #[prost(int32, optional, tag = "1")]
    pub time_to_live: Option<i32>,
}
