//! The HTTP client: one signed `POST /<Action>` per call, the response's
//! MD5 and signature checked, errors decoded and classified.
//!
//! Every call is signed afresh (new `x-ots-date`, the body's own MD5), so
//! a retry is never a replay of a stale signature.

use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::proto;
use super::sign;
use crate::config::Secret;
use crate::sink::ErrorClass;

/// `x-ots-apiversion` of every request.
pub const API_VERSION: &str = "2015-12-31";

/// Where to connect and who to be.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// `http(s)://host[:port][/prefix]`, without a trailing slash.
    pub endpoint: String,
    /// The instance name (`x-ots-instancename`).
    pub instance: String,
    /// The AccessKey ID.
    pub access_key_id: String,
    /// The AccessKey secret.
    pub access_key_secret: Secret,
    /// An STS token, with temporary credentials.
    pub sts_token: Option<Secret>,
    /// Longest a call may take, connection included.
    pub timeout: Duration,
}

/// A Tablestore client for one instance.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    settings: ClientSettings,
}

/// A call that failed.
#[derive(Debug, thiserror::Error)]
pub enum OtsError {
    /// The service answered with an error.
    #[error("{action}: {code}: {message} (HTTP {status}{})", request_id.as_deref().map(|r| format!(", request id {r}")).unwrap_or_default())]
    Service {
        /// The action called.
        action: &'static str,
        /// HTTP status.
        status: u16,
        /// The service's error code, e.g. `OTSServerBusy`.
        code: String,
        /// The service's message.
        message: String,
        /// `x-ots-requestid`, for a support ticket.
        request_id: Option<String>,
    },
    /// The request did not get an answer: connection refused or reset,
    /// timeout, TLS failure.
    #[error("{action}: {source}")]
    Transport {
        /// The action called.
        action: &'static str,
        /// What reqwest saw.
        #[source]
        source: reqwest::Error,
    },
    /// An answer came that cannot be trusted or read: bad MD5, bad
    /// signature, undecodable body.
    #[error("{action}: invalid response: {reason}")]
    Response {
        /// The action called.
        action: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl OtsError {
    /// The service's error code, if the service answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            OtsError::Service { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Codes every SDK retries for every action (throttling and contention).
const THROTTLING: [&str; 8] = [
    "OTSRowOperationConflict",
    "OTSNotEnoughCapacityUnit",
    "OTSTableNotReady",
    "OTSPartitionUnavailable",
    "OTSServerBusy",
    "OTSStorageServerBusy",
    "OTSOperationConflict",
    "OTSOperationThrottled",
];

/// Codes of a passing fault on the service side: a rewrite is an upsert of
/// the same point, so retrying them is safe.
const TRANSIENT: [&str; 3] = [
    "OTSTimeout",
    "OTSInternalServerError",
    "OTSServerUnavailable",
];

/// Codes that will fail again the same way.
const PERMANENT: [&str; 8] = [
    "OTSParameterInvalid",
    "OTSAuthFailed",
    "OTSRequestBodyTooLarge",
    "OTSObjectNotExist",
    "OTSConditionCheckFail",
    "OTSInvalidPK",
    "OTSOutOfColumnCountLimit",
    "OTSOutOfRowSizeLimit",
];

/// Whether an error code is worth retrying. `status` is the HTTP status of
/// a whole-request error, `None` for a row of `failed_rows`. Unknown codes
/// are retried when the status is 5xx, or for a row (as the Java SDK's
/// `TimeseriesWriter` does); otherwise they are permanent.
pub fn code_class(code: &str, message: &str, status: Option<u16>) -> ErrorClass {
    if THROTTLING.contains(&code) || TRANSIENT.contains(&code) {
        return ErrorClass::Retryable;
    }
    if code == "OTSQuotaExhausted" {
        return if message.contains("Too frequent table operations") {
            ErrorClass::Retryable
        } else {
            ErrorClass::Permanent
        };
    }
    if PERMANENT.contains(&code) {
        return ErrorClass::Permanent;
    }
    match status {
        Some(s) if s < 500 => ErrorClass::Permanent,
        _ => ErrorClass::Retryable,
    }
}

/// Whether retrying a failed call may help.
pub fn classify(error: &OtsError) -> ErrorClass {
    match error {
        OtsError::Service {
            status,
            code,
            message,
            ..
        } => code_class(code, message, Some(*status)),
        // No answer, or one mangled on the way: the write may or may not
        // have happened, and writing a point again is an upsert.
        OtsError::Transport { .. } | OtsError::Response { .. } => ErrorClass::Retryable,
    }
}

impl Client {
    /// A client with rustls (ring) and the system's root certificates.
    pub fn new(settings: ClientSettings) -> anyhow::Result<Client> {
        let mut builder = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .user_agent(concat!("weir/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(30));
        // reqwest is built without a default crypto provider (the
        // workspace's rustls uses ring), so it always gets a config.
        let https = settings.endpoint.starts_with("https://");
        builder = builder.tls_backend_preconfigured(tls_config(https)?);
        Ok(Client {
            http: builder.build()?,
            settings,
        })
    }

    /// The settings.
    pub fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    /// `PutTimeseriesData` with a ready body.
    pub async fn put_timeseries_data(
        &self,
        body: Bytes,
    ) -> Result<proto::PutTimeseriesDataResponse, OtsError> {
        let action = "PutTimeseriesData";
        let bytes = self.call(action, body).await?;
        decode(action, &bytes)
    }

    /// `DescribeTimeseriesTable`.
    pub async fn describe_timeseries_table(
        &self,
        table: &str,
    ) -> Result<proto::DescribeTimeseriesTableResponse, OtsError> {
        let action = "DescribeTimeseriesTable";
        let body = proto::DescribeTimeseriesTableRequest {
            table_name: table.to_owned(),
        }
        .encode_to_vec();
        let bytes = self.call(action, body.into()).await?;
        decode(action, &bytes)
    }

    /// `CreateTimeseriesTable`, data kept forever, no analytical store.
    pub async fn create_timeseries_table(&self, table: &str) -> Result<(), OtsError> {
        let action = "CreateTimeseriesTable";
        let body = proto::CreateTimeseriesTableRequest {
            table_meta: proto::TimeseriesTableMeta {
                table_name: table.to_owned(),
                table_options: Some(proto::TimeseriesTableOptions {
                    time_to_live: Some(-1),
                }),
                status: None,
            },
            enable_analytical_store: Some(false),
        }
        .encode_to_vec();
        self.call(action, body.into()).await.map(drop)
    }

    /// One signed call; the verified response body.
    async fn call(&self, action: &'static str, body: Bytes) -> Result<Bytes, OtsError> {
        let s = &self.settings;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let date = sign::ots_date(now_ms);
        let md5 = sign::content_md5(&body);
        let mut ots: Vec<(&str, &str)> = vec![
            ("x-ots-date", &date),
            ("x-ots-apiversion", API_VERSION),
            ("x-ots-accesskeyid", &s.access_key_id),
            ("x-ots-instancename", &s.instance),
            ("x-ots-contentmd5", &md5),
        ];
        if let Some(token) = &s.sts_token {
            ots.push(("x-ots-ststoken", token.expose()));
        }
        let signature =
            sign::v2_signature(s.access_key_secret.expose(), action, ots.iter().copied());
        let mut headers = HeaderMap::with_capacity(ots.len() + 1);
        for (name, value) in ots
            .iter()
            .copied()
            .chain([("x-ots-signature", signature.as_str())])
        {
            let value = HeaderValue::from_str(value).map_err(|_| OtsError::Response {
                action,
                reason: format!("header {name} cannot hold its value (non-ASCII?)"),
            })?;
            headers.insert(HeaderName::from_static(name), value);
        }
        let response = self
            .http
            .post(format!("{}/{action}", s.endpoint))
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|source| OtsError::Transport { action, source })?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response
            .bytes()
            .await
            .map_err(|source| OtsError::Transport { action, source })?;
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let request_id = header("x-ots-requestid").map(str::to_owned);

        if (200..300).contains(&status) {
            self.verify(action, &headers, &bytes, true)?;
            return Ok(bytes);
        }
        let (code, message) = match proto::Error::decode(bytes.as_ref()) {
            Ok(e) if !e.code.is_empty() => (e.code, e.message.unwrap_or_default()),
            _ if status >= 500 => (
                "OTSServerUnavailable".to_owned(),
                format!("HTTP {status} with no error body"),
            ),
            _ => (
                format!("HTTP{status}"),
                String::from_utf8_lossy(&bytes).into_owned(),
            ),
        };
        // A 403 OTSAuthFailed is not signed (the service could not tell who
        // asked); other errors are checked like successes.
        if !(status == 403 && code == "OTSAuthFailed") && header("authorization").is_some() {
            self.verify(action, &headers, &bytes, false)?;
        }
        Err(OtsError::Service {
            action,
            status,
            code,
            message,
            request_id,
        })
    }

    /// Checks a response's MD5 and `authorization` signature.
    fn verify(
        &self,
        action: &'static str,
        headers: &HeaderMap,
        body: &[u8],
        required: bool,
    ) -> Result<(), OtsError> {
        let bad = |reason: String| OtsError::Response { action, reason };
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        match header("x-ots-contentmd5") {
            Some(md5) if md5 != sign::content_md5(body) => {
                return Err(bad("the body does not match its x-ots-contentmd5".into()));
            }
            None if required => return Err(bad("x-ots-contentmd5 is missing".into())),
            _ => {}
        }
        let Some(authorization) = header("authorization") else {
            return if required {
                Err(bad(
                    "the response is not signed (no authorization header)".into()
                ))
            } else {
                Ok(())
            };
        };
        let expected_prefix = format!("OTS {}:", self.settings.access_key_id);
        let Some(signature) = authorization.strip_prefix(&expected_prefix) else {
            return Err(bad("the response is signed for another AccessKey ID".into()));
        };
        let ots = headers
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)));
        let expected =
            sign::response_signature(self.settings.access_key_secret.expose(), action, ots);
        if !sign::same_signature(signature, &expected) {
            return Err(bad("invalid signature in response".into()));
        }
        Ok(())
    }
}

fn decode<T: prost::Message + Default>(action: &'static str, bytes: &[u8]) -> Result<T, OtsError> {
    T::decode(bytes).map_err(|e| OtsError::Response {
        action,
        reason: format!("undecodable body: {e}"),
    })
}

/// rustls with the ring provider (the workspace's one TLS stack) and the
/// system's roots, which must exist when the endpoint is `https://`.
fn tls_config(https: bool) -> anyhow::Result<rustls::ClientConfig> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    anyhow::ensure!(
        !https || !roots.is_empty(),
        "no system CA certificates found (install ca-certificates)"
    );
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_classified_as_the_reference_table_says() {
        use ErrorClass::{Permanent, Retryable};
        let table: [(&str, &str, Option<u16>, ErrorClass); 20] = [
            ("OTSServerBusy", "", Some(503), Retryable),
            ("OTSPartitionUnavailable", "", Some(503), Retryable),
            ("OTSNotEnoughCapacityUnit", "", Some(403), Retryable),
            ("OTSRowOperationConflict", "", Some(409), Retryable),
            ("OTSTableNotReady", "", Some(404), Retryable),
            ("OTSOperationThrottled", "", Some(403), Retryable),
            ("OTSTimeout", "", Some(503), Retryable),
            ("OTSInternalServerError", "", Some(500), Retryable),
            ("OTSServerUnavailable", "", Some(503), Retryable),
            (
                "OTSQuotaExhausted",
                "Too frequent table operations.",
                Some(403),
                Retryable,
            ),
            (
                "OTSQuotaExhausted",
                "Number of tables exceeded.",
                Some(403),
                Permanent,
            ),
            ("OTSParameterInvalid", "", Some(400), Permanent),
            ("OTSAuthFailed", "Signature mismatch.", Some(403), Permanent),
            ("OTSRequestBodyTooLarge", "", Some(413), Permanent),
            ("OTSObjectNotExist", "", Some(404), Permanent),
            ("OTSOutOfRowSizeLimit", "", Some(400), Permanent),
            ("OTSSomethingNew", "", Some(502), Retryable),
            ("OTSSomethingNew", "", Some(400), Permanent),
            // A row of failed_rows with an unknown code: retried.
            ("OTSSomethingNew", "", None, Retryable),
            ("OTSParameterInvalid", "", None, Permanent),
        ];
        for (code, message, status, class) in table {
            assert_eq!(
                code_class(code, message, status),
                class,
                "{code} {message} {status:?}"
            );
        }
    }

    #[test]
    fn service_errors_are_classified_by_code_and_other_failures_are_retried() {
        let service = |status, code: &str| OtsError::Service {
            action: "PutTimeseriesData",
            status,
            code: code.into(),
            message: String::new(),
            request_id: None,
        };
        assert_eq!(
            classify(&service(503, "OTSServerBusy")),
            ErrorClass::Retryable
        );
        assert_eq!(
            classify(&service(403, "OTSAuthFailed")),
            ErrorClass::Permanent
        );
        let response = OtsError::Response {
            action: "PutTimeseriesData",
            reason: "invalid signature in response".into(),
        };
        assert_eq!(classify(&response), ErrorClass::Retryable);
    }
}
