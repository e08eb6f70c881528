//! The Tablestore sink on the shared driver.

use std::sync::Arc;

use anyhow::Context as _;

use super::client::{self, Client, ClientSettings, OtsError};
use super::encode::{Chunk, RowSpec};
use crate::config::TablestoreConfig;
use crate::message::Message;
use crate::sink::{ErrorClass, MessageFailure, Rejected, Sink, Written};

/// Writes rows to one timeseries table.
#[derive(Clone, Debug)]
pub struct TablestoreSink {
    client: Arc<Client>,
    spec: Arc<RowSpec>,
    auto_create: bool,
}

impl TablestoreSink {
    /// A sink for `config`. Does no I/O: see [`Self::preflight`].
    pub fn new(config: &TablestoreConfig) -> anyhow::Result<TablestoreSink> {
        let client = Client::new(ClientSettings {
            endpoint: config.endpoint.trim_end_matches('/').to_owned(),
            instance: config.instance.clone(),
            access_key_id: config.access_key_id.clone(),
            access_key_secret: config.access_key_secret.clone(),
            sts_token: config.sts_token.clone(),
            timeout: config.request_timeout,
        })
        .context("cannot build the HTTP client")?;
        Ok(TablestoreSink {
            client: Arc::new(client),
            spec: Arc::new(RowSpec {
                table: config.table.clone(),
                measurement: config.measurement.clone(),
                data_source: config.data_source.clone(),
                tags: config.tags.clone(),
                fields: config.fields.clone(),
                string_fields: config.string_fields.clone(),
                binary_fields: config.binary_fields.clone(),
                strings: config.strings,
                int_as_double: config.int_as_double,
                timestamp: config.timestamp.clone(),
                meta_update_mode: config.meta_update_mode,
                undefined_vars_as_null: false,
            }),
            auto_create: config.auto_create,
        })
    }

    /// Renders undefined template variables as `null` instead of
    /// rejecting the message (`undefined_vars_as_null`).
    pub fn with_undefined_as_null(mut self, on: bool) -> Self {
        Arc::make_mut(&mut self.spec).undefined_vars_as_null = on;
        self
    }

    /// The start-up check: the table is described (created first when it
    /// does not exist and `auto_create` is on). Fails with what to fix
    /// when credentials, instance or table are wrong.
    pub async fn preflight(&self) -> anyhow::Result<()> {
        let table = &self.spec.table;
        match self.client.describe_timeseries_table(table).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("OTSObjectNotExist") && self.auto_create => {
                tracing::info!(table = %table, "Creating the timeseries table.");
                self.client
                    .create_timeseries_table(table)
                    .await
                    .map_err(|e| explain(e, table))?;
                self.client
                    .describe_timeseries_table(table)
                    .await
                    .map(drop)
                    .map_err(|e| explain(e, table))
            }
            Err(e) => Err(explain(e, table)),
        }
    }
}

/// An error of the start-up check, with what to do about it.
fn explain(e: OtsError, table: &str) -> anyhow::Error {
    let hint = match e.code() {
        Some("OTSAuthFailed") if e.to_string().contains("Signature mismatch") => {
            "the request signature does not match: check access_key_secret (and access_key_id)"
        }
        Some("OTSAuthFailed") => "check access_key_id, access_key_secret, sts_token and instance",
        Some("OTSObjectNotExist") => "create the timeseries table, or set auto_create = true",
        _ => match &e {
            OtsError::Transport { .. } => "check endpoint and the network",
            OtsError::Response { .. } => {
                "the answer was not signed with this AccessKey: check endpoint and credentials"
            }
            OtsError::Service { .. } => "see the service's message",
        },
    };
    anyhow::anyhow!("timeseries table {table:?}: {e}; {hint}")
}

impl Sink for TablestoreSink {
    type Request = Vec<Chunk>;
    type Error = OtsError;

    fn encode(&self, batch: &[Message], rejected: &mut Vec<Rejected>) -> Vec<Chunk> {
        self.spec.encode(batch, rejected)
    }

    async fn write(&self, chunks: &Vec<Chunk>) -> Result<Written, OtsError> {
        let mut failures = Vec::new();
        for (k, chunk) in chunks.iter().enumerate() {
            match self.client.put_timeseries_data(chunk.body.clone()).await {
                Ok(response) => {
                    for row in response.failed_rows {
                        let Some(&index) = usize::try_from(row.row_index)
                            .ok()
                            .and_then(|i| chunk.indices.get(i))
                        else {
                            tracing::warn!(
                                row_index = row.row_index,
                                "The service reported a failed row that the request does not have."
                            );
                            continue;
                        };
                        let code = row.error_code.unwrap_or_default();
                        let message = row.error_message.unwrap_or_default();
                        failures.push(MessageFailure {
                            index,
                            class: client::code_class(&code, &message, None),
                            reason: format!("{code}: {message}"),
                        });
                    }
                }
                // Nothing written yet: the driver retries or bisects the
                // whole batch.
                Err(e) if k == 0 => return Err(e),
                // Earlier requests were written. The rest go back to the
                // driver as retryable: on their own they are one request,
                // whose failure is then handled like any other.
                Err(e) => {
                    let reason = e.to_string();
                    for rest in &chunks[k..] {
                        failures.extend(rest.indices.iter().map(|&index| MessageFailure {
                            index,
                            class: ErrorClass::Retryable,
                            reason: reason.clone(),
                        }));
                    }
                    break;
                }
            }
        }
        Ok(if failures.is_empty() {
            Written::All
        } else {
            Written::Partial(failures)
        })
    }

    fn classify(&self, error: &OtsError) -> ErrorClass {
        client::classify(error)
    }

    async fn healthcheck(&self) -> anyhow::Result<()> {
        self.client
            .describe_timeseries_table(&self.spec.table)
            .await
            .map(drop)
            .map_err(|e| explain(e, &self.spec.table))
    }
}
