//! Step two: from the raw manifest to the resolved [`Config`], checking
//! everything that needs more than the shape of one value.
//!
//! Each item (`[broker]`, `[http]`, each plugin, sink and rule) that
//! survived the shape check is deserialized into its raw type and resolved:
//! durations parsed, URLs split, paths made absolute, plugins loaded and
//! every step's merged config run through the plugin's `init`, templates
//! and topic filters parsed, references between sections followed
//! (`to`, `errors`, `steps`, `dead_letter`, dead-letter cycles), and the
//! template variables of each sink checked against the captures of each
//! rule that writes to it. Every problem is reported at the key or value it
//! is about; the model is built only when there is none.
//!
//! What this module must never do: put a value read from the environment
//! into a message (messages quote the manifest's text, see `secret.rs`), or
//! stop at the first problem.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::diagnostic::{Reporter, did_you_mean};
use super::manifest::{
    Broker, DurationText, HopSpec, Http, PluginSpec, RuleSpec, SinkSpec, StepSpec, WindowKindName,
    WindowStepSpec,
};
use super::model::*;
use super::secret::{self, Secret};
use super::shape::{Node, Seg, at, table_label, value_label};
use super::{Compile, Config, duration};
use crate::engine::{Limits, PluginError, Runtime};
use crate::rule::TopicFilter;
use crate::template::{Template, TemplateError, Variable};

/// Template builtins: never a capture, never a payload path.
const BUILTINS: [&str; 5] = ["topic", "ts", "qos", "clientid", "payload"];

/// Largest `memory_mib`: a 32-bit linear memory cannot grow past 4 GiB.
const MAX_MEMORY_MIB: u32 = 4096;

/// Everything step two needs.
pub(super) struct Validator<'a, 's> {
    root: &'a Node,
    bad_items: &'a BTreeSet<Vec<Seg>>,
    r: &'a mut Reporter<'s>,
    /// The manifest (absolute).
    path: PathBuf,
    /// Its folder: relative paths start here.
    dir: PathBuf,
    runtime: &'a Runtime,
    compile: Compile,
    /// Plugins left to compile in the background.
    compiling: BTreeMap<String, PendingPlugin>,
    rule_names: Vec<Option<String>>,
}

/// A template of a sink, and where it is written.
struct TemplateUse {
    field: &'static str,
    template: Template,
    path: Vec<Seg>,
}

/// A sink as far as it resolved.
struct ResolvedSink {
    config: SinkConfig,
    templates: Vec<TemplateUse>,
}

impl<'a, 's> Validator<'a, 's> {
    pub(super) fn new(
        root: &'a Node,
        bad_items: &'a BTreeSet<Vec<Seg>>,
        r: &'a mut Reporter<'s>,
        manifest: &Path,
        runtime: &'a Runtime,
        compile: Compile,
    ) -> Self {
        let path = std::path::absolute(manifest).unwrap_or_else(|_| manifest.to_owned());
        let dir = path
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("."));
        let rule_names = super::shape::rule_names(root);
        Validator {
            root,
            bad_items,
            r,
            path,
            dir,
            runtime,
            compile,
            compiling: BTreeMap::new(),
            rule_names,
        }
    }

    /// Resolves the whole manifest; `None` when anything was reported as
    /// an error (here or in step one).
    pub(super) fn run(mut self) -> Option<Config> {
        let broker = self.broker();
        let http = self.http();

        let plugin_names = self.names("plugins");
        let mut plugins = BTreeMap::new();
        for name in &plugin_names {
            if let Some(p) = self.plugin(name) {
                plugins.insert(name.clone(), p);
            }
        }

        let sink_names = self.names("sinks");
        let mut sinks = BTreeMap::new();
        for name in &sink_names {
            if let Some(s) = self.sink(name, &sink_names, broker.as_ref()) {
                sinks.insert(name.clone(), s);
            }
        }
        self.dead_letter_cycles(&sinks);

        self.unique_rule_names();
        let mut rules = Vec::new();
        let mut waiting = Vec::new();
        let rule_count = self.root.get("rules").map_or(0, |r| r.items().len());
        for i in 0..rule_count {
            if let Some(rule) = self.rule(i, &plugin_names, &plugins, &sink_names, &sinks) {
                let plugins: BTreeSet<String> = (rule.steps.iter())
                    .filter(|s| self.compiling.contains_key(&s.plugin))
                    .map(|s| s.plugin.clone())
                    .collect();
                if !plugins.is_empty() {
                    waiting.push(WaitingRule {
                        name: rule.name.clone(),
                        plugins,
                    });
                }
                rules.push(rule);
            }
        }
        self.unused(&plugin_names, &sink_names, &sinks);

        if self.r.error_count() > 0 {
            return None;
        }
        Some(Config {
            path: self.path.clone(),
            source: Source(self.r.source().into()),
            broker: broker?,
            http: http?,
            plugins,
            sinks: sinks.into_iter().map(|(k, v)| (k, v.config)).collect(),
            rules,
            compiling: self.compiling,
            waiting,
        })
    }

    // ----- helpers -------------------------------------------------------

    fn span(&self, path: &[Seg]) -> Range<usize> {
        self.root.span_at(path)
    }

    fn key_span(&self, path: &[Seg]) -> Range<usize> {
        self.root.key_span_at(path)
    }

    /// The manifest's text of a value (quotes included): what messages
    /// quote, since a resolved value may be a secret.
    fn written(&self, path: &[Seg]) -> String {
        let span = self.span(path);
        self.r.text(&span).to_owned()
    }

    fn value_label(&self, path: &[Seg]) -> String {
        value_label(path, &self.rule_names)
    }

    fn table_label(&self, path: &[Seg]) -> String {
        table_label(path, &self.rule_names)
    }

    fn error(&mut self, path: &[Seg], message: impl Into<String>) -> &mut super::Diagnostic {
        let span = self.span(path);
        self.r.error(span, message)
    }

    /// Keys of a top-level table (all of them, broken entries included, so
    /// that a reference to a broken entry is not reported a second time).
    fn names(&self, section: &str) -> Vec<String> {
        self.root
            .get(section)
            .map(|t| t.entries().iter().map(|e| e.key.clone()).collect())
            .unwrap_or_default()
    }

    /// Deserializes one item of the cleaned tree.
    fn item<T: DeserializeOwned + Default>(&mut self, path: &[Seg]) -> Option<T> {
        match self.root.at(path) {
            None => Some(T::default()),
            Some(_) => self.present_item(path),
        }
    }

    fn present_item<T: DeserializeOwned>(&mut self, path: &[Seg]) -> Option<T> {
        let node = self.root.at(path)?;
        match serde_json::from_value(node.to_json()) {
            Ok(value) => Some(value),
            Err(e) => {
                // Step one reported why; a failure it did not see is still
                // reported, not swallowed.
                if !self.bad_items.contains(path) {
                    let label = self.table_label(path);
                    self.error(path, format!("{label}: {e}"));
                }
                None
            }
        }
    }

    fn duration(&mut self, path: &[Seg], text: &str) -> Option<Duration> {
        match duration::parse(text) {
            Ok(d) => Some(d),
            Err(reason) => {
                let what = self.value_label(path);
                let written = self.written(path);
                self.error(
                    path,
                    format!("{what} is not a duration: {written}: {reason}"),
                )
                .hint(duration::HINT);
                None
            }
        }
    }

    fn at_least_one(
        &mut self,
        path: &[Seg],
        value: Option<usize>,
        default: usize,
    ) -> Option<usize> {
        match value {
            Some(0) => {
                let what = self.value_label(path);
                self.error(path, format!("{what} must be at least 1"));
                None
            }
            Some(v) => Some(v),
            None => Some(default),
        }
    }

    /// A path relative to the manifest's folder.
    fn file_path(&self, written: &str) -> PathBuf {
        self.dir.join(written)
    }

    /// Reports a file that does not exist, suggesting a close name from
    /// the same folder.
    fn missing_file(&mut self, path: &[Seg], what: &str, written: &str, extension: Option<&str>) {
        let file = self.file_path(written);
        let suggestion = close_file(&file, extension).map(|close| {
            let shown = Path::new(written)
                .parent()
                .map(|p| p.join(&close))
                .unwrap_or_else(|| PathBuf::from(&close));
            format!("did you mean \"{}\"?", shown.display())
        });
        let d = self.error(path, format!("{what} \"{written}\" does not exist"));
        d.hint(suggestion.unwrap_or_else(|| "paths are relative to the manifest's folder".into()));
    }

    fn warn_clear_password(&mut self, path: &[Seg]) {
        let span = self.span(path);
        if !secret::has_reference(self.r.text(&span)) {
            let what = self.value_label(path);
            let env = if path.first() == Some(&Seg::Key("broker".into())) {
                "MQTT_PASSWORD".to_owned()
            } else {
                "OUT_PASSWORD".to_owned()
            };
            self.r
                .warning(span, format!("{what} is written in clear"))
                .hint(format!(
                    "read it from the environment: password = \"${{env:{env}}}\""
                ));
        }
    }

    fn template(&mut self, path: &[Seg], text: &str) -> Option<Template> {
        match Template::parse(text) {
            Ok(t) => Some(t),
            Err(e) => {
                let what = self.value_label(path);
                let span = self.span(path);
                let at = template_error_span(self.r.text(&span), &span, text, &e);
                self.r
                    .error(at, format!("{what} is not a valid template: {e}"))
                    .hint("variables are written ${name}; write $${ for a literal ${");
                None
            }
        }
    }

    // ----- broker and http -----------------------------------------------

    fn broker(&mut self) -> Option<BrokerConfig> {
        let base = at!["broker"];
        let spec: Broker = self.item(&base)?;
        let mut ok = true;

        let embedded = match &spec.embedded {
            None => None,
            Some(e) => {
                let listen = self.socket_addr(&at!["broker", "embedded", "listen"], &e.listen);
                let max = self.at_least_one(
                    &at!["broker", "embedded", "max_connections"],
                    Some(e.max_connections),
                    1,
                );
                match (listen, max) {
                    (Some(listen), Some(max_connections)) => Some(EmbeddedConfig {
                        listen,
                        max_connections,
                    }),
                    _ => {
                        ok = false;
                        None
                    }
                }
            }
        };

        let endpoint = match &spec.url {
            Some(url) => self.endpoint(&at!["broker", "url"], url),
            None => Some(match &embedded {
                // Subscribe to our own embedded broker.
                Some(e) => Endpoint {
                    host: if e.listen.ip().is_unspecified() {
                        "127.0.0.1".to_owned()
                    } else {
                        e.listen.ip().to_string()
                    },
                    port: e.listen.port(),
                    tls: false,
                },
                None => Endpoint {
                    host: "127.0.0.1".to_owned(),
                    port: MQTT_PORT,
                    tls: false,
                },
            }),
        };

        if embedded.is_some() && spec.url.is_none() && spec.protocol == MqttProtocol::V5 {
            self.error(
                &at!["broker", "protocol"],
                "the embedded broker speaks MQTT 3.1.1 to weir, not MQTT 5",
            )
            .hint("remove protocol = \"5\", or set url to subscribe through another broker");
            ok = false;
        }

        let tls = match (&endpoint, &spec.tls) {
            (Some(ep), Some(tls)) if !ep.tls => {
                let span = self.key_span(&at!["broker", "tls"]);
                self.r
                    .error(span, "TLS files are set but the broker URL is not mqtts://")
                    .hint("use an mqtts:// URL, or remove [broker.tls]");
                ok = false;
                None
            }
            (Some(ep), tls) if ep.tls => match tls {
                None => Some(TlsConfig::default()),
                Some(tls) => {
                    let mut files = |key: &str,
                                     written: &Option<String>|
                     -> Option<Option<PathBuf>> {
                        let Some(written) = written else {
                            return Some(None);
                        };
                        let file = self.file_path(written);
                        if file.is_file() {
                            Some(Some(file))
                        } else {
                            self.missing_file(&at!["broker", "tls", key], "file", written, None);
                            None
                        }
                    };
                    let ca_file = files("ca_file", &tls.ca_file);
                    let cert_file = files("cert_file", &tls.cert_file);
                    let key_file = files("key_file", &tls.key_file);
                    if tls.cert_file.is_some() != tls.key_file.is_some() {
                        let span = self.span(&at!["broker", "tls"]);
                        self.r
                            .error(
                                span,
                                "[broker.tls] needs both cert_file and key_file, or neither",
                            )
                            .hint("mutual TLS takes a client certificate and its key");
                        ok = false;
                    }
                    match (ca_file, cert_file, key_file) {
                        (Some(ca_file), Some(cert_file), Some(key_file)) => Some(TlsConfig {
                            ca_file,
                            cert_file,
                            key_file,
                        }),
                        _ => {
                            ok = false;
                            None
                        }
                    }
                }
            },
            _ => None,
        };

        let client_id = match &spec.client_id {
            Some(id) if id.is_empty() => {
                self.error(
                    &at!["broker", "client_id"],
                    "\"client_id\" in [broker] cannot be empty",
                )
                .hint("a fixed, unique id per instance keeps its session across restarts");
                ok = false;
                String::new()
            }
            Some(id) => id.clone(),
            None => default_client_id(),
        };

        if spec.password.is_some() {
            self.warn_clear_password(&at!["broker", "password"]);
            if spec.username.is_none() && spec.protocol == MqttProtocol::V311 {
                self.error(
                    &at!["broker", "password"],
                    "a password needs a username in MQTT 3.1.1",
                )
                .hint("set username too, or use protocol = \"5\"");
                ok = false;
            }
        }

        let keep_alive = self.duration(&at!["broker", "keep_alive"], &spec.keep_alive.0);
        if let Some(k) = keep_alive
            && (k < Duration::from_secs(1) || k > Duration::from_secs(u16::MAX as u64))
        {
            self.error(
                &at!["broker", "keep_alive"],
                "\"keep_alive\" in [broker] must be between 1s and 65535s",
            );
            ok = false;
        }
        let reconnect_min = self.duration(&at!["broker", "reconnect_min"], &spec.reconnect_min.0);
        let reconnect_max = self.duration(&at!["broker", "reconnect_max"], &spec.reconnect_max.0);
        if let (Some(min), Some(max)) = (reconnect_min, reconnect_max) {
            if min.is_zero() {
                self.error(
                    &at!["broker", "reconnect_min"],
                    "\"reconnect_min\" in [broker] must be more than 0",
                );
                ok = false;
            } else if min > max {
                let path = if spec_has(self.root, &at!["broker", "reconnect_max"]) {
                    at!["broker", "reconnect_max"]
                } else {
                    at!["broker", "reconnect_min"]
                };
                self.error(
                    &path,
                    "\"reconnect_max\" in [broker] is shorter than \"reconnect_min\"",
                );
                ok = false;
            }
        }

        let endpoint = endpoint?;
        if !ok {
            return None;
        }
        Some(BrokerConfig {
            host: endpoint.host,
            port: endpoint.port,
            tls,
            client_id,
            username: spec.username,
            password: spec.password.map(Secret::new),
            protocol: spec.protocol,
            keep_alive: keep_alive?,
            clean_session: spec.clean_session,
            reconnect_min: reconnect_min?,
            reconnect_max: reconnect_max?,
            embedded,
        })
    }

    fn endpoint(&mut self, path: &[Seg], url: &str) -> Option<Endpoint> {
        match parse_url(url) {
            Ok(ep) => Some(ep),
            Err((reason, hint)) => {
                let what = self.value_label(path);
                let d = self.error(path, format!("{what} is not a broker URL: {reason}"));
                d.hint(hint.unwrap_or("write mqtt://host:port or mqtts://host:port"));
                None
            }
        }
    }

    fn socket_addr(&mut self, path: &[Seg], text: &str) -> Option<SocketAddr> {
        match text.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                let what = self.value_label(path);
                let written = self.written(path);
                self.error(
                    path,
                    format!("{what} is not an address and port: {written}"),
                )
                .hint("write an IP address and a port, e.g. \"127.0.0.1:1883\" or \"[::1]:1883\"");
                None
            }
        }
    }

    fn http(&mut self) -> Option<Option<SocketAddr>> {
        let spec: Http = self.item(&at!["http"])?;
        if !spec.enabled {
            return Some(None);
        }
        self.socket_addr(&at!["http", "listen"], &spec.listen)
            .map(Some)
    }

    // ----- plugins -------------------------------------------------------

    fn plugin(&mut self, name: &str) -> Option<PluginConfig> {
        let spec: PluginSpec = self.present_item(&at!["plugins", name])?;
        let file_path = at!["plugins", name, "path"];
        let mut limits = Limits::default();
        let mut ok = true;
        if let Some(mib) = spec.memory_mib {
            if mib == 0 || mib > MAX_MEMORY_MIB {
                let what = self.value_label(&at!["plugins", name, "memory_mib"]);
                self.error(
                    &at!["plugins", name, "memory_mib"],
                    format!("{what} must be between 1 and {MAX_MEMORY_MIB}"),
                );
                ok = false;
            } else {
                limits.memory_cap_bytes = (mib as usize) << 20;
            }
        }
        if let Some(deadline) = &spec.deadline {
            let p = at!["plugins", name, "deadline"];
            match self.duration(&p, &deadline.0) {
                Some(d) if d.is_zero() => {
                    let what = self.value_label(&p);
                    self.error(&p, format!("{what} must be more than 0"));
                    ok = false;
                }
                Some(d) => limits.batch_deadline = d,
                None => ok = false,
            }
        }
        if spec.path.trim().is_empty() {
            let what = self.value_label(&file_path);
            self.error(&file_path, format!("{what} cannot be empty"))
                .hint("the plugin's .wasm file, relative to the manifest");
            return None;
        }
        let file = self.file_path(&spec.path);
        if !file.is_file() {
            self.missing_file(
                &file_path,
                &format!("plugin \"{name}\": file"),
                &spec.path,
                Some("wasm"),
            );
            return None;
        }
        let loaded = match self.compile {
            Compile::Now => self.runtime.load(&file).map(Some),
            Compile::Background => self.runtime.load_unless_slow(&file),
        };
        let plugin = match loaded {
            Ok(Some(p)) => p,
            Ok(None) => {
                if ok {
                    let pending = PendingPlugin {
                        path: file,
                        config: spec.config,
                        limits,
                    };
                    self.compiling.insert(name.to_owned(), pending);
                }
                return None;
            }
            Err(e) => {
                let message = load_error(name, &spec.path, &e);
                let d = self.error(&file_path, message);
                if matches!(e, PluginError::Contract { .. }) {
                    d.hint("a plugin is a component built with weir-sdk (or the C kit) for wasm32-wasip2");
                }
                return None;
            }
        };
        ok.then(|| PluginConfig {
            name: name.to_owned(),
            path: file,
            config: spec.config,
            limits,
            plugin,
        })
    }

    // ----- sinks ---------------------------------------------------------

    fn sink(
        &mut self,
        name: &str,
        sink_names: &[String],
        broker: Option<&BrokerConfig>,
    ) -> Option<ResolvedSink> {
        let base = at!["sinks", name];
        let spec: SinkSpec = self.present_item(&base)?;
        let mut templates = Vec::new();
        let mut ok = true;
        let driver_options = match &spec {
            SinkSpec::Console(s) => &s.driver,
            SinkSpec::File(s) => &s.driver,
            SinkSpec::Mqtt(s) => &s.driver,
            SinkSpec::Null(s) => &s.driver,
            SinkSpec::Tablestore(s) => &s.driver,
            SinkSpec::Tdengine(s) => &s.driver,
        };
        let driver = self.driver(name, driver_options, sink_names);
        let sub = |key: &str| at!["sinks", name, key].to_vec();

        let kind = match spec {
            SinkSpec::Console(s) => {
                let template = match &s.template {
                    None => None,
                    Some(text) => {
                        let t = self.template(&sub("template"), text);
                        if let Some(t) = &t {
                            templates.push(TemplateUse {
                                field: "template",
                                template: t.clone(),
                                path: sub("template"),
                            });
                        } else {
                            ok = false;
                        }
                        t
                    }
                };
                SinkKind::Console {
                    format: s.format.unwrap_or(ConsoleFormat::Line),
                    template,
                }
            }
            SinkSpec::File(s) => {
                if s.path.trim().is_empty() {
                    let what = self.value_label(&sub("path"));
                    self.error(&sub("path"), format!("{what} cannot be empty"));
                    ok = false;
                }
                let max_file_bytes = match s.max_file_bytes {
                    Some(0) => {
                        let what = self.value_label(&sub("max_file_bytes"));
                        self.error(&sub("max_file_bytes"), format!("{what} must be at least 1"));
                        ok = false;
                        0
                    }
                    Some(n) => n,
                    None => DEFAULT_MAX_FILE_BYTES,
                };
                SinkKind::File {
                    path: self.file_path(&s.path),
                    max_file_bytes,
                    max_files: s.max_files.unwrap_or(DEFAULT_MAX_FILES),
                }
            }
            SinkSpec::Mqtt(s) => {
                let topic = self.template(&sub("topic"), &s.topic);
                if let Some(t) = &topic {
                    if s.topic.is_empty() {
                        let what = self.value_label(&sub("topic"));
                        self.error(&sub("topic"), format!("{what} cannot be empty"));
                        ok = false;
                    } else if let Some(c) = wildcard_in_literal(&s.topic) {
                        let what = self.value_label(&sub("topic"));
                        self.error(&sub("topic"), format!("{what} contains the wildcard `{c}`"))
                            .hint("a topic to publish to cannot contain + or #");
                        ok = false;
                    }
                    templates.push(TemplateUse {
                        field: "topic",
                        template: t.clone(),
                        path: sub("topic"),
                    });
                }
                let payload = match &s.payload {
                    None => None,
                    Some(text) => {
                        let t = self.template(&sub("payload"), text);
                        match &t {
                            Some(t) => templates.push(TemplateUse {
                                field: "payload",
                                template: t.clone(),
                                path: sub("payload"),
                            }),
                            None => ok = false,
                        }
                        t
                    }
                };
                let qos = s.qos.unwrap_or(0);
                if !self.qos(&sub("qos"), qos) {
                    ok = false;
                }
                if s.password.is_some() {
                    self.warn_clear_password(&sub("password"));
                }
                let own = s.url.is_some()
                    || s.client_id.is_some()
                    || s.username.is_some()
                    || s.password.is_some();
                let own_broker = if own {
                    let endpoint = match &s.url {
                        Some(url) => self.endpoint(&sub("url"), url),
                        None => None,
                    };
                    match (broker, &s.url, endpoint) {
                        (_, Some(_), None) => {
                            ok = false;
                            None
                        }
                        (Some(main), url, endpoint) => {
                            let mut b = main.clone();
                            b.embedded = None;
                            b.client_id = s
                                .client_id
                                .clone()
                                .unwrap_or_else(|| format!("{}-out-{name}", main.client_id));
                            if let Some(ep) = endpoint {
                                b.host = ep.host;
                                b.port = ep.port;
                                b.tls = ep.tls.then(TlsConfig::default);
                            }
                            // Another broker gets no credentials of ours
                            // unless they are written for it.
                            if url.is_some() || s.username.is_some() || s.password.is_some() {
                                b.username = s.username.clone();
                                b.password = s.password.clone().map(Secret::new);
                            }
                            Some(b)
                        }
                        (None, _, _) => None,
                    }
                } else {
                    None
                };
                SinkKind::Mqtt {
                    topic: topic?,
                    payload,
                    qos,
                    retain: s.retain.unwrap_or(false),
                    broker: own_broker,
                }
            }
            SinkSpec::Null(_) => SinkKind::Null,
            SinkSpec::Tablestore(s) => {
                if let Some(d) = &driver
                    && d.batch_size > TABLESTORE_MAX_BATCH_SIZE
                {
                    let what = self.value_label(&sub("batch_size"));
                    self.error(
                        &sub("batch_size"),
                        format!(
                            "{what} is {}, over the {TABLESTORE_MAX_BATCH_SIZE} rows one PutTimeseriesData may carry",
                            d.batch_size
                        ),
                    )
                    .hint("write batch_size = 200 or less");
                    ok = false;
                }
                match self.tablestore(name, &s, &mut templates) {
                    Some(config) => SinkKind::Tablestore(Box::new(config)),
                    None => {
                        ok = false;
                        SinkKind::Null
                    }
                }
            }
            SinkSpec::Tdengine(s) => {
                let kind = self.tdengine(name, &s, &mut templates);
                ok &= kind.is_some();
                kind?
            }
        };
        let driver = driver?;
        ok.then(|| ResolvedSink {
            config: SinkConfig {
                name: name.to_owned(),
                driver,
                kind,
            },
            templates,
        })
    }

    /// A `tablestore` sink: names against the service's rules, templates
    /// parsed (and checked like rows when they are literal).
    fn tablestore(
        &mut self,
        name: &str,
        s: &super::manifest::TablestoreSink,
        templates: &mut Vec<TemplateUse>,
    ) -> Option<TablestoreConfig> {
        use crate::sink::tablestore::encode;
        let sub = |key: &str| at!["sinks", name, key].to_vec();
        let mut ok = true;

        let endpoint = match check_ots_endpoint(&s.endpoint) {
            Ok(e) => Some(e),
            Err(reason) => {
                let what = self.value_label(&sub("endpoint"));
                self.error(
                    &sub("endpoint"),
                    format!("{what} is not an endpoint: {reason}"),
                )
                .hint("write https://<instance>.<region>.ots.aliyuncs.com");
                None
            }
        };
        if s.instance.is_empty()
            || !s
                .instance
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-')
        {
            let what = self.value_label(&sub("instance"));
            let written = self.written(&sub("instance"));
            self.error(
                &sub("instance"),
                format!("{what} is {written}: instance names are letters, digits and -"),
            );
            ok = false;
        }
        for key in ["access_key_id", "access_key_secret"] {
            let value = if key == "access_key_id" {
                &s.access_key_id
            } else {
                &s.access_key_secret
            };
            if value.trim().is_empty() {
                let what = self.value_label(&sub(key));
                self.error(&sub(key), format!("{what} cannot be empty"));
                ok = false;
            }
        }
        for key in ["access_key_secret", "sts_token"] {
            let path = sub(key);
            if key == "sts_token" && s.sts_token.is_none() {
                continue;
            }
            let span = self.span(&path);
            if !secret::has_reference(self.r.text(&span)) {
                let what = self.value_label(&path);
                let env = format!("TABLESTORE_{}", key.to_ascii_uppercase());
                self.r
                    .warning(span, format!("{what} is written in clear"))
                    .hint(format!(
                        "read it from the environment: {key} = \"${{env:{env}}}\""
                    ));
            }
        }
        if let Err(reason) = check_table_name(&s.table) {
            let what = self.value_label(&sub("table"));
            let written = self.written(&sub("table"));
            self.error(&sub("table"), format!("{what} is {written}: {reason}"))
                .hint("table names are 1 to 128 of A-Z, a-z, 0-9 and _, not starting with a digit");
            ok = false;
        }

        let mut template = |this: &mut Self,
                            field: &'static str,
                            path: Vec<Seg>,
                            text: &str,
                            literal_check: fn(&str) -> Result<(), String>|
         -> Option<Template> {
            let t = this.template(&path, text)?;
            if t.is_literal()
                && let Err(reason) = literal_check(text)
            {
                let what = this.value_label(&path);
                this.error(&path, format!("{what}: {reason}"));
                return None;
            }
            templates.push(TemplateUse {
                field,
                template: t.clone(),
                path,
            });
            Some(t)
        };
        let measurement = template(
            self,
            "measurement",
            sub("measurement"),
            &s.measurement,
            encode::check_measurement,
        );
        ok &= measurement.is_some();
        let data_source = match &s.data_source {
            None => None,
            Some(text) => {
                let t = template(
                    self,
                    "data_source",
                    sub("data_source"),
                    text,
                    encode::check_data_source,
                );
                ok &= t.is_some();
                t
            }
        };
        let mut tags = Vec::new();
        for (tag, text) in &s.tags {
            let path = at!["sinks", name, "tags", tag.as_str()].to_vec();
            if let Err(reason) = encode::check_tag(tag, "") {
                let span = self.key_span(&path);
                self.r.error(span, reason);
                ok = false;
                continue;
            }
            match template(self, "tags", path, text, |v| encode::check_tag("t", v)) {
                Some(t) => tags.push((tag.clone(), t)),
                None => ok = false,
            }
        }
        let timestamp = match &s.timestamp {
            None => None,
            Some(text) => {
                let t = template(self, "timestamp", sub("timestamp"), text, |v| {
                    match v.trim().parse::<i64>() {
                        Ok(t) if t >= 0 => Ok(()),
                        _ => Err(
                            "a literal timestamp must be whole microseconds since the epoch".into(),
                        ),
                    }
                });
                ok &= t.is_some();
                t
            }
        };

        let names = |this: &mut Self, key: &str, list: &Option<Vec<String>>| {
            let mut out = BTreeSet::new();
            let mut good = true;
            for (i, field) in list.iter().flatten().enumerate() {
                let lower = field.to_ascii_lowercase();
                if let Err(reason) = encode::check_field_name(&lower) {
                    let path = at!["sinks", name, key, i].to_vec();
                    let written = this.written(&path);
                    this.error(
                        &path,
                        format!("field {written} in \"{key}\" of sink \"{name}\" {reason}"),
                    );
                    good = false;
                }
                out.insert(field.clone());
            }
            (out, good)
        };
        let (_, good_fields) = names(self, "fields", &s.fields);
        let (string_fields, good_strings) = names(self, "string_fields", &s.string_fields);
        let (binary_fields, good_binaries) = names(self, "binary_fields", &s.binary_fields);
        ok &= good_fields && good_strings && good_binaries;
        if let Some(both) = string_fields.intersection(&binary_fields).next() {
            let path = sub("binary_fields");
            self.error(
                &path,
                format!(
                    "field \"{both}\" of sink \"{name}\" is in both string_fields and binary_fields"
                ),
            );
            ok = false;
        }
        if s.fields.as_ref().is_some_and(Vec::is_empty) {
            let what = self.value_label(&sub("fields"));
            self.error(&sub("fields"), format!("{what} is empty"))
                .hint("leave it out to write every payload field");
            ok = false;
        }
        let request_timeout = match &s.request_timeout {
            None => Some(DEFAULT_TABLESTORE_REQUEST_TIMEOUT),
            Some(t) => match self.duration(&sub("request_timeout"), &t.0) {
                Some(d) if d.is_zero() => {
                    let what = self.value_label(&sub("request_timeout"));
                    self.error(
                        &sub("request_timeout"),
                        format!("{what} must be more than 0"),
                    );
                    None
                }
                other => other,
            },
        };
        if !ok {
            return None;
        }
        Some(TablestoreConfig {
            endpoint: endpoint?,
            instance: s.instance.clone(),
            access_key_id: s.access_key_id.clone(),
            access_key_secret: Secret::new(s.access_key_secret.clone()),
            sts_token: s.sts_token.clone().map(Secret::new),
            table: s.table.clone(),
            measurement: measurement?,
            data_source,
            tags,
            fields: s.fields.clone(),
            string_fields,
            binary_fields,
            strings: s.strings.unwrap_or(StringType::Binary),
            int_as_double: s.int_as_double.unwrap_or(false),
            timestamp,
            meta_update_mode: s.meta_update_mode.unwrap_or(MetaUpdateMode::Normal),
            auto_create: s.auto_create.unwrap_or(false),
            request_timeout: request_timeout?,
        })
    }

    /// A `type = "tdengine"` sink; its templates are added to `templates`
    /// for the check against the rules' captures.
    fn tdengine(
        &mut self,
        name: &str,
        s: &super::manifest::TdengineSink,
        templates: &mut Vec<TemplateUse>,
    ) -> Option<SinkKind> {
        use super::manifest::TagsSpec;
        use crate::sink::tdengine::{LineTemplate, SqlTemplate, TdengineMode};
        let sub = |key: &str| at!["sinks", name, key].to_vec();
        let label = format!("[sinks.{name}]");
        let mut ok = true;
        ok &= self.tdengine_dsn(&sub("dsn"), &s.dsn);
        let duration = |v: &mut Self, key: &str, value: &Option<DurationText>, default| match value
        {
            None => Some(default),
            Some(text) => match v.duration(&sub(key), &text.0) {
                Some(d) if d.is_zero() => {
                    let what = v.value_label(&sub(key));
                    v.error(&sub(key), format!("{what} must be more than 0"));
                    None
                }
                other => other,
            },
        };
        let timeout = duration(self, "timeout", &s.timeout, DEFAULT_TDENGINE_TIMEOUT);
        let interval = duration(
            self,
            "health_check_interval",
            &s.health_check_interval,
            DEFAULT_HEALTH_CHECK_INTERVAL,
        );
        let line = match s.mode.as_deref() {
            None | Some("sql") => false,
            Some("line") => true,
            Some(_) => {
                let what = self.value_label(&sub("mode"));
                let written = self.written(&sub("mode"));
                self.error(&sub("mode"), format!("{what} is {written}, not \"sql\" or \"line\""))
                    .hint("\"sql\" writes INSERT statements; \"line\" writes InfluxDB line protocol (schemaless)");
                return None;
            }
        };
        // Options of the other mode are mistakes, not silently ignored.
        let root = self.root;
        let present = |key: &str| spec_has(root, &sub(key));
        let foreign: &[&str] = if line {
            &["sql", "stable", "table", "columns", "values"]
        } else {
            &["measurement", "fields", "precision"]
        };
        for &key in foreign {
            if present(key) {
                let span = self.key_span(&sub(key));
                let mode = if line { "line" } else { "sql" };
                self.r
                    .error(
                        span,
                        format!("\"{key}\" in {label} does not apply to mode = \"{mode}\""),
                    )
                    .hint(if line {
                        "mode = \"line\" takes measurement, tags and fields"
                    } else {
                        "set mode = \"line\" for measurement, fields and precision"
                    });
                ok = false;
            }
        }
        let mut template = |v: &mut Self, key: &'static str, text: &str| -> Option<Template> {
            let t = v.template(&sub(key), text)?;
            templates.push(TemplateUse {
                field: key,
                template: t.clone(),
                path: sub(key),
            });
            Some(t)
        };
        let mode = if line {
            let measurement = match &s.measurement {
                Some(m) => template(self, "measurement", m),
                None => {
                    self.error(
                        &at!["sinks", name],
                        format!("{label} with mode = \"line\" needs \"measurement\""),
                    )
                    .hint("e.g. measurement = \"temp_hum\"");
                    None
                }
            };
            let mut fields = Vec::new();
            match &s.fields {
                Some(f) if !f.is_empty() => {
                    for (k, text) in f {
                        match template(self, "fields", text) {
                            Some(t) => fields.push((k.clone(), t)),
                            None => ok = false,
                        }
                    }
                }
                _ => {
                    self.error(
                        &at!["sinks", name],
                        format!(
                            "{label} with mode = \"line\" needs at least one entry in \"fields\""
                        ),
                    )
                    .hint("e.g. fields = { temp = \"${temp}\", hum = \"${hum}\" }");
                    ok = false;
                }
            }
            let mut tags = Vec::new();
            match &s.tags {
                None => {}
                Some(TagsSpec::Named(named)) => {
                    for (k, text) in named {
                        match template(self, "tags", text) {
                            Some(t) => tags.push((k.clone(), t)),
                            None => ok = false,
                        }
                    }
                }
                Some(TagsSpec::Values(_)) => {
                    let what = self.value_label(&sub("tags"));
                    self.error(
                        &sub("tags"),
                        format!("{what} must name its tags in mode = \"line\""),
                    )
                    .hint("write tags = { client = \"${clientid}\" }");
                    ok = false;
                }
            }
            let nanoseconds = match s.precision.as_deref() {
                None | Some("ms") => false,
                Some("ns") => true,
                Some("us") => {
                    let what = self.value_label(&sub("precision"));
                    self.error(&sub("precision"), format!("{what}: microseconds are not supported in line mode"))
                        .hint("the taos crate (0.12.3) sends \"us\", which taosAdapter rejects: use \"ms\" or \"ns\"");
                    ok = false;
                    false
                }
                Some(_) => {
                    let what = self.value_label(&sub("precision"));
                    let written = self.written(&sub("precision"));
                    self.error(
                        &sub("precision"),
                        format!("{what} is {written}, not \"ms\" or \"ns\""),
                    );
                    ok = false;
                    false
                }
            };
            TdengineMode::Line(LineTemplate {
                measurement: measurement?,
                tags,
                fields,
                nanoseconds,
            })
        } else {
            let table_form = ["stable", "table", "values", "columns"]
                .iter()
                .any(|k| present(k));
            let (sql, key) = match (&s.sql, table_form) {
                (Some(_), true) => {
                    let span = self.key_span(&sub("sql"));
                    self.r
                        .error(span, format!("{label} has both \"sql\" and the super-table options"))
                        .hint("write the whole statement in sql, or use stable, table, tags and values without sql");
                    return None;
                }
                (Some(sql), false) => (sql.clone(), "sql"),
                (None, true) => {
                    let mut missing = Vec::new();
                    for k in ["stable", "table", "values"] {
                        if !present(k) {
                            missing.push(k);
                        }
                    }
                    let tags = match &s.tags {
                        Some(TagsSpec::Values(v)) if !v.is_empty() => v.clone(),
                        _ => {
                            missing.push("tags");
                            Vec::new()
                        }
                    };
                    if !missing.is_empty() {
                        self.error(&at!["sinks", name], format!("{label}: the super-table form also needs {}", missing.join(", ")))
                            .hint("e.g. stable = \"iot.meters\", table = \"iot.d_${clientid}\", tags = [\"'${clientid}'\"], values = \"(${ts}, ${temp})\"");
                        return None;
                    }
                    let mut sql = format!(
                        "INSERT INTO {} USING {} TAGS ({})",
                        s.table.as_deref().unwrap_or(""),
                        s.stable.as_deref().unwrap_or(""),
                        tags.join(", ")
                    );
                    if let Some(c) = &s.columns {
                        sql.push(' ');
                        sql.push_str(c);
                    }
                    sql.push_str(" VALUES ");
                    sql.push_str(s.values.as_deref().unwrap_or(""));
                    (sql, "values")
                }
                (None, false) => {
                    self.error(&at!["sinks", name], format!("{label} needs \"sql\" (or the super-table options)"))
                        .hint("e.g. sql = \"INSERT INTO iot_data.temp_hum(ts, temp, hum, clientid) VALUES (${ts}, ${temp}, ${hum}, '${clientid}')\"");
                    return None;
                }
            };
            // Template syntax, reported at the key it is written in.
            let whole = if key == "sql" {
                template(self, "sql", &sql)?
            } else {
                let mut all = None;
                for k in ["table", "values", "stable"] {
                    if let Some(text) = match k {
                        "table" => s.table.as_deref(),
                        "values" => s.values.as_deref(),
                        _ => s.stable.as_deref(),
                    } {
                        all = template(self, k, text).or(all);
                    }
                }
                if let Some(TagsSpec::Values(v)) = &s.tags {
                    for text in v {
                        template(self, "tags", text)?;
                    }
                }
                all?;
                Template::parse(&sql).ok()?
            };
            match SqlTemplate::parse(whole.source()) {
                Ok(t) => TdengineMode::Sql(t),
                Err(e) => {
                    let what = self.value_label(&sub(key));
                    self.error(&sub(key), format!("{what}: {e}"))
                        .hint("write INSERT INTO <table> [USING <stable> TAGS (...)] [(columns)] VALUES (...)");
                    return None;
                }
            }
        };
        if !ok {
            return None;
        }
        Some(SinkKind::Tdengine {
            dsn: Secret::new(s.dsn.clone()),
            mode,
            auto_create: s.auto_create.clone().unwrap_or_default(),
            timeout: timeout?,
            health_check_interval: interval?,
        })
    }

    /// Checks a TDengine DSN's scheme and token. Messages quote the
    /// manifest's text, never the resolved value.
    fn tdengine_dsn(&mut self, path: &[Seg], dsn: &str) -> bool {
        let what = self.value_label(path);
        let written = self.written(path);
        let scheme = dsn.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        let tls = match scheme.as_deref() {
            Some("ws" | "http" | "taos+ws" | "taosws") => false,
            Some("wss" | "https" | "taos+wss" | "taoswss") => true,
            _ => {
                self.error(path, format!("{what} is not a TDengine WebSocket DSN: {written}"))
                    .hint("write ws://user:password@host:6041, wss://…, or wss://host?token=… for TDengine Cloud");
                return false;
            }
        };
        if dsn.contains("token=") && !tls {
            self.error(path, format!("{what} sends a token over plain ws://"))
                .hint("TDengine Cloud needs wss://host?token=…");
            return false;
        }
        true
    }

    fn driver(
        &mut self,
        name: &str,
        d: &super::manifest::DriverOptions,
        sink_names: &[String],
    ) -> Option<DriverConfig> {
        let p = |key: &str| at!["sinks", name, key].to_vec();
        let mut ok = true;
        let mut out = DriverConfig::default();
        macro_rules! positive {
            ($field:ident, $default:expr) => {
                match self.at_least_one(&p(stringify!($field)), d.$field, $default) {
                    Some(v) => out.$field = v,
                    None => ok = false,
                }
            };
        }
        positive!(batch_size, DEFAULT_BATCH_SIZE);
        positive!(max_batch_bytes, DEFAULT_MAX_BATCH_BYTES);
        positive!(inflight_window, DEFAULT_INFLIGHT_WINDOW);
        positive!(max_buffer_bytes, DEFAULT_MAX_BUFFER_BYTES);
        if let Some(t) = &d.batch_time {
            match self.duration(&p("batch_time"), &t.0) {
                Some(t) => out.batch_time = t,
                None => ok = false,
            }
        }
        if let Some(ttl) = &d.request_ttl {
            if ttl.trim() == "infinity" {
                out.request_ttl = None;
            } else {
                match self.duration(&p("request_ttl"), ttl) {
                    Some(t) if t.is_zero() => {
                        let what = self.value_label(&p("request_ttl"));
                        self.error(&p("request_ttl"), format!("{what} must be more than 0"))
                            .hint("write \"infinity\" to never give up");
                        ok = false;
                    }
                    Some(t) => out.request_ttl = Some(t),
                    None => ok = false,
                }
            }
        }
        if let Some(mode) = d.query_mode {
            out.query_mode = mode;
        }
        out.max_retries = d.max_retries;
        out.undefined_vars_as_null = d.undefined_vars_as_null.unwrap_or(false);
        if let Some(dead) = &d.dead_letter {
            if dead == name {
                let what = self.value_label(&p("dead_letter"));
                self.error(
                    &p("dead_letter"),
                    format!("{what}: a sink cannot be its own dead letter"),
                )
                .hint("name another sink, e.g. a file sink");
                ok = false;
            } else if !self.sink_exists(&p("dead_letter"), dead, sink_names) {
                ok = false;
            }
            out.dead_letter = Some(dead.clone());
        }
        ok.then_some(out)
    }

    /// Whether `name` is a sink; reports it at `path` when not.
    fn sink_exists(&mut self, path: &[Seg], name: &str, sink_names: &[String]) -> bool {
        if sink_names.iter().any(|s| s == name) {
            return true;
        }
        let what = self.value_label(path);
        let written = self.written(path);
        let hint = match did_you_mean(name, sink_names.iter().map(String::as_str)) {
            Some(close) => format!("did you mean \"{close}\"?"),
            None if sink_names.is_empty() => {
                "no sink is defined: add one as [sinks.<name>]".to_owned()
            }
            None => format!("defined sinks: {}", sink_names.join(", ")),
        };
        self.error(
            path,
            format!("{what} names sink {written}, which is not defined"),
        )
        .hint(hint);
        false
    }

    /// `a → b → a`: each cycle once, at the `dead_letter` of its first
    /// sink by name. (A sink naming itself is reported by `driver`.)
    fn dead_letter_cycles(&mut self, sinks: &BTreeMap<String, ResolvedSink>) {
        let next =
            |name: &str| -> Option<&str> { sinks.get(name)?.config.driver.dead_letter.as_deref() };
        let mut reported: BTreeSet<String> = BTreeSet::new();
        for start in sinks.keys() {
            let mut chain = vec![start.as_str()];
            let mut at = start.as_str();
            while let Some(n) = next(at) {
                if n == at {
                    break;
                }
                if let Some(pos) = chain.iter().position(|c| *c == n) {
                    let cycle: Vec<&str> = chain[pos..].to_vec();
                    let first = *cycle.iter().min().expect("a cycle has members");
                    if cycle.len() > 1 && reported.insert(first.to_owned()) {
                        let from = cycle.iter().position(|c| *c == first).expect("member");
                        let mut shown: Vec<&str> = cycle[from..]
                            .iter()
                            .chain(&cycle[..from])
                            .copied()
                            .collect();
                        shown.push(first);
                        self.error(
                            &at!["sinks", first, "dead_letter"],
                            format!("dead letters go round in a circle: {}", shown.join(" → ")),
                        )
                        .hint("the last sink of a dead-letter chain must have no dead_letter");
                    }
                    break;
                }
                chain.push(n);
                at = n;
            }
        }
    }

    fn qos(&mut self, path: &[Seg], qos: u8) -> bool {
        match qos {
            0 | 1 => true,
            2 => {
                let what = self.value_label(path);
                self.error(path, format!("{what}: QoS 2 is not supported"))
                    .hint("use 1: weir acknowledges a message only after every sink has accepted it, which is at-least-once end to end");
                false
            }
            _ => {
                let what = self.value_label(path);
                self.error(path, format!("{what} must be 0 or 1, not {qos}"));
                false
            }
        }
    }

    // ----- rules ---------------------------------------------------------

    fn unique_rule_names(&mut self) {
        let mut first: BTreeMap<String, usize> = BTreeMap::new();
        for i in 0..self.rule_names.len() {
            let Some(name) = self.rule_names[i].clone() else {
                continue;
            };
            let name_path = at!["rules", i, "name"];
            if name.trim().is_empty() {
                self.error(&name_path, format!("rule #{} has an empty name", i + 1))
                    .hint("every rule needs a unique name: it labels its logs and metrics");
                continue;
            }
            match first.get(&name) {
                Some(&earlier) => {
                    let (line, _) = self
                        .r
                        .line_column(self.span(&at!["rules", earlier, "name"]).start);
                    self.error(&name_path, format!("two rules are named \"{name}\""))
                        .hint(format!(
                            "the first is at line {line}; rule names must be unique"
                        ));
                }
                None => {
                    first.insert(name, i);
                }
            }
        }
    }

    fn rule(
        &mut self,
        i: usize,
        plugin_names: &[String],
        plugins: &BTreeMap<String, PluginConfig>,
        sink_names: &[String],
        sinks: &BTreeMap<String, ResolvedSink>,
    ) -> Option<RuleConfig> {
        let base = at!["rules", i];
        let spec: RuleSpec = self.present_item(&base)?;
        let p = |key: &str| at!["rules", i, key].to_vec();
        let label = self.table_label(&base);
        let mut ok = true;

        if spec.from.is_empty() {
            self.error(&p("from"), format!("\"from\" in {label} is empty"))
                .hint(
                    "list at least one topic filter, e.g. from = [\"devices/{device}/temp_hum\"]",
                );
            ok = false;
        }
        let mut filters = Vec::new();
        for (j, text) in spec.from.iter().enumerate() {
            let fp = at!["rules", i, "from", j];
            match TopicFilter::parse(text) {
                Ok(f) => filters.push((f, fp.to_vec())),
                Err(e) => {
                    let written = self.written(&fp);
                    self.error(&fp, format!("topic filter {written} in {label}: {e}"));
                    ok = false;
                }
            }
        }
        ok &= self.qos(&p("qos"), spec.qos);
        if let Some(group) = &spec.share_group
            && (group.is_empty() || group.contains(['/', '+', '#']))
        {
            let what = self.value_label(&p("share_group"));
            self.error(
                &p("share_group"),
                format!("{what} must be a non-empty name without /, + or #"),
            );
            ok = false;
        }
        let max_payload_bytes = self.at_least_one(
            &p("max_payload_bytes"),
            spec.max_payload_bytes,
            DEFAULT_MAX_PAYLOAD_BYTES,
        );
        let queue_size = self.at_least_one(&p("queue_size"), spec.queue_size, DEFAULT_QUEUE_SIZE);
        let linger = match &spec.linger {
            Some(text) => self.duration(&p("linger"), &text.0),
            None => Some(DEFAULT_LINGER),
        };
        let backpressure = spec.backpressure.unwrap_or(Backpressure::Block);
        if backpressure != Backpressure::Block && spec.qos != 0 {
            let what = self.value_label(&p("backpressure"));
            let written = self.written(&p("backpressure"));
            self.error(&p("backpressure"), format!("{what} is {written}, which needs qos = 0"))
                .hint("a QoS 1 message is never dropped: use \"block\" (the broker then holds messages back), or qos = 0");
            ok = false;
        }

        let steps = self.steps(i, &spec.steps, plugin_names, plugins, sink_names);
        ok &= steps.is_some();

        if spec.to.is_empty() {
            self.error(&p("to"), format!("\"to\" in {label} is empty"))
                .hint("list the sinks the results go to, e.g. to = [\"console\"]");
            ok = false;
        }
        let mut seen = BTreeSet::new();
        for (j, sink) in spec.to.iter().enumerate() {
            let tp = at!["rules", i, "to", j];
            if !self.sink_exists(&tp, sink, sink_names) {
                ok = false;
            } else if !seen.insert(sink.as_str()) {
                let written = self.written(&tp);
                self.error(
                    &tp,
                    format!("sink {written} is listed twice in \"to\" of {label}"),
                );
                ok = false;
            }
        }
        if let Some(errors) = &spec.errors {
            ok &= self.sink_exists(&p("errors"), errors, sink_names);
        }

        // Template variables of the sinks this rule writes to, against the
        // rule's captures. Only when every filter parsed: otherwise the
        // captures are not known.
        if filters.len() == spec.from.len() && !filters.is_empty() {
            let no_json = spec.format == PayloadFormat::Raw && spec.steps.is_empty();
            for sink in &spec.to {
                if let Some(resolved) = sinks.get(sink) {
                    ok &= self.check_variables(
                        &spec.name,
                        &filters,
                        no_json,
                        sink,
                        &resolved.templates,
                    );
                }
            }
        }

        let steps = steps?;
        if !ok {
            return None;
        }
        Some(RuleConfig {
            name: spec.name,
            filters: filters.into_iter().map(|(f, _)| f).collect(),
            qos: spec.qos,
            share_group: spec.share_group,
            format: spec.format,
            max_payload_bytes: max_payload_bytes?,
            steps,
            to: spec.to,
            errors: spec.errors,
            backpressure,
            queue_size: queue_size?,
            linger: linger?,
        })
    }

    fn steps(
        &mut self,
        i: usize,
        specs: &[StepSpec],
        plugin_names: &[String],
        plugins: &BTreeMap<String, PluginConfig>,
        sink_names: &[String],
    ) -> Option<Vec<StepConfig>> {
        let mut out = Vec::new();
        let mut ok = true;
        for (j, step) in specs.iter().enumerate() {
            let sp = at!["rules", i, "steps", j];
            let (name, overrides, name_path, window_spec) = match step {
                StepSpec::Plugin(name) => (name, None, sp.to_vec(), None),
                StepSpec::WithConfig {
                    plugin,
                    config,
                    window,
                } => (
                    plugin,
                    Some(config),
                    at!["rules", i, "steps", j, "plugin"].to_vec(),
                    window.as_deref(),
                ),
            };
            let window = match window_spec {
                Some(w) => match self.window(i, j, w, sink_names) {
                    Some(w) => Some(w),
                    None => {
                        ok = false;
                        continue;
                    }
                },
                None => None,
            };
            let step_label = self.table_label(&sp);
            if !plugin_names.iter().any(|p| p == name) {
                let written = self.written(&name_path);
                let hint = match did_you_mean(name, plugin_names.iter().map(String::as_str)) {
                    Some(close) => format!("did you mean \"{close}\"?"),
                    None if plugin_names.is_empty() => {
                        "no plugin is defined: add one as [plugins.<name>] path = \"….wasm\""
                            .to_owned()
                    }
                    None => format!("defined plugins: {}", plugin_names.join(", ")),
                };
                self.error(
                    &name_path,
                    format!("{step_label} names plugin {written}, which is not defined"),
                )
                .hint(hint);
                ok = false;
                continue;
            }
            let mut config = match (plugins.get(name), self.compiling.get(name)) {
                (Some(plugin), _) => plugin.config.clone(),
                // Its `init` checks the config once it has compiled.
                (None, Some(pending)) => pending.config.clone(),
                // A plugin that failed to load was reported at its [plugins] entry.
                (None, None) => {
                    ok = false;
                    continue;
                }
            };
            if let Some(overrides) = overrides {
                config.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            let Some(plugin) = plugins.get(name) else {
                out.push(StepConfig {
                    plugin: name.clone(),
                    config,
                    window,
                });
                continue;
            };
            // `instantiate` checks the keys against what the plugin accepts
            // and runs its `init`: exactly what `weir run` will do.
            let started = if window.is_some() {
                plugin
                    .plugin
                    .instantiate_aggregator(name, &config, plugin.limits)
                    .map(drop)
            } else {
                plugin
                    .plugin
                    .instantiate(name, &config, plugin.limits)
                    .map(drop)
            };
            if let Err(e) = started {
                ok = false;
                match &e {
                    PluginError::UnknownConfigKey {
                        key,
                        suggestion,
                        accepted,
                        ..
                    } => {
                        // Point at the key where it is written: the step's
                        // config, else the plugin's.
                        let in_step = overrides.is_some_and(|o| o.contains_key(key));
                        let key_path = if in_step {
                            at!["rules", i, "steps", j, "config", key.as_str()].to_vec()
                        } else {
                            at!["plugins", name.as_str(), "config", key.as_str()].to_vec()
                        };
                        let span = self.key_span(&key_path);
                        let hint = match suggestion {
                            Some(s) => format!("did you mean \"{s}\"? it accepts: {accepted}"),
                            None => format!("it accepts: {accepted}"),
                        };
                        self.r
                            .error(
                                span,
                                format!(
                                    "plugin \"{name}\" does not accept config key \"{key}\" ({step_label})"
                                ),
                            )
                            .hint(hint);
                    }
                    PluginError::InitRefused { reason, .. } => {
                        self.error(
                            &sp,
                            format!("{step_label}: plugin \"{name}\" refused its config: {reason}"),
                        );
                    }
                    other => {
                        self.error(&sp, format!("{step_label}: {other}"));
                    }
                }
                continue;
            }
            out.push(StepConfig {
                plugin: name.clone(),
                config,
                window,
            });
        }
        ok.then_some(out)
    }

    /// Resolves a window step's `window` table: the keys its kind needs,
    /// none it ignores, positive sizes, and an existing `late_to` sink.
    fn window(
        &mut self,
        i: usize,
        j: usize,
        spec: &WindowStepSpec,
        sink_names: &[String],
    ) -> Option<crate::window::WindowSpec> {
        use crate::window::{FullPolicy, TimeFormat, TimeSource, WindowKind, WindowSpec};
        let p = |key: &str| at!["rules", i, "steps", j, "window", key].to_vec();
        let kind_name = spec.kind;
        let kind_text = match kind_name {
            WindowKindName::Tumbling => "tumbling",
            WindowKindName::Hopping => "hopping",
            WindowKindName::Sliding => "sliding",
            WindowKindName::Session => "session",
            WindowKindName::Count => "count",
        };
        let mut ok = true;
        // Keys that do not apply to this kind: reported, not ignored.
        let present: [(&str, bool); 6] = [
            ("size", spec.size.is_some()),
            ("hop", spec.hop.is_some()),
            ("gap", spec.gap.is_some()),
            ("max_length", spec.max_length.is_some()),
            ("count", spec.count.is_some()),
            ("trigger", spec.trigger.is_some()),
        ];
        let applies: &[&str] = match kind_name {
            WindowKindName::Tumbling => &["size"],
            WindowKindName::Hopping => &["size", "hop"],
            WindowKindName::Sliding => &["size", "trigger"],
            WindowKindName::Session => &["gap", "max_length"],
            WindowKindName::Count => &["count", "hop"],
        };
        for (key, is_set) in present {
            if is_set && !applies.contains(&key) {
                let span = self.key_span(&p(key));
                self.r
                    .error(
                        span,
                        format!("\"{key}\" does not apply to {kind_text} windows"),
                    )
                    .hint(format!("{kind_text} windows take: {}", applies.join(", ")));
                ok = false;
            }
        }
        let kind_path = p("kind");
        let required = |this: &mut Self, key: &str, example: &str| {
            let span = this.span(&kind_path);
            this.r
                .error(span, format!("a {kind_text} window needs \"{key}\""))
                .hint(format!("e.g. {key} = {example}"));
        };
        let positive =
            |this: &mut Self, key: &str, text: &Option<DurationText>| -> Option<Option<i64>> {
                let Some(text) = text else { return Some(None) };
                let d = this.duration(&p(key), &text.0)?;
                if d.is_zero() {
                    let what = this.value_label(&p(key));
                    this.error(&p(key), format!("{what} must be more than 0"));
                    return None;
                }
                Some(Some(d.as_millis() as i64))
            };
        // A bad duration is reported and counts as absent from here on.
        let mut checked = |this: &mut Self, key: &str, text: &Option<DurationText>| {
            positive(this, key, text).unwrap_or_else(|| {
                ok = false;
                None
            })
        };
        let size_bad = spec.size.is_some();
        let gap_bad = spec.gap.is_some();
        let size = checked(self, "size", &spec.size);
        let gap = checked(self, "gap", &spec.gap);
        let max_length = checked(self, "max_length", &spec.max_length);
        let lateness = checked(self, "allowed_lateness", &spec.allowed_lateness);
        let idle = checked(self, "idle_timeout", &spec.idle_timeout);
        let (size_bad, gap_bad) = (size_bad && size.is_none(), gap_bad && gap.is_none());
        let bound = match &spec.max_out_of_orderness {
            None => 0,
            Some(text) => match self.duration(&p("max_out_of_orderness"), &text.0) {
                Some(d) => d.as_millis() as i64,
                None => {
                    ok = false;
                    0
                }
            },
        };
        // Each problem is reported; none stops the others from being seen.
        let mut hop_bad = false;
        let hop_duration = match &spec.hop {
            Some(HopSpec::Duration(text)) if kind_name == WindowKindName::Hopping => {
                match self.duration(&p("hop"), &text.0) {
                    Some(d) if !d.is_zero() => Some(d.as_millis() as i64),
                    Some(_) => {
                        let what = self.value_label(&p("hop"));
                        self.error(&p("hop"), format!("{what} must be more than 0"));
                        hop_bad = true;
                        None
                    }
                    None => {
                        hop_bad = true;
                        None
                    }
                }
            }
            Some(HopSpec::Events(_)) if kind_name == WindowKindName::Hopping => {
                let what = self.value_label(&p("hop"));
                self.error(
                    &p("hop"),
                    format!("{what} of a hopping window is a duration"),
                )
                .hint("e.g. hop = \"5s\"");
                hop_bad = true;
                None
            }
            Some(HopSpec::Duration(_)) if kind_name == WindowKindName::Count => {
                let what = self.value_label(&p("hop"));
                self.error(
                    &p("hop"),
                    format!("{what} of a count window is a number of events"),
                )
                .hint("e.g. hop = 2");
                hop_bad = true;
                None
            }
            _ => None,
        };
        let kind = match kind_name {
            WindowKindName::Tumbling | WindowKindName::Sliding | WindowKindName::Hopping
                if size.is_none() =>
            {
                if !size_bad {
                    required(self, "size", "\"10s\"");
                }
                None
            }
            WindowKindName::Tumbling => Some(WindowKind::Tumbling {
                size_ms: size.expect("checked"),
            }),
            WindowKindName::Hopping => {
                let size_ms = size.expect("checked");
                match hop_duration {
                    None if hop_bad => None,
                    None => {
                        required(self, "hop", "\"5s\"");
                        None
                    }
                    Some(hop_ms) if hop_ms > size_ms => {
                        let what = self.value_label(&p("hop"));
                        self.error(
                            &p("hop"),
                            format!("{what} is longer than the window's size"),
                        )
                        .hint("events between windows would belong to none; use hop <= size");
                        None
                    }
                    Some(hop_ms) => Some(WindowKind::Hopping { size_ms, hop_ms }),
                }
            }
            WindowKindName::Sliding => Some(WindowKind::Sliding {
                size_ms: size.expect("checked"),
                trigger: spec.trigger.as_ref().map(|t| crate::window::Trigger {
                    field: t.field.clone(),
                    op: t.op,
                    value: t.value.clone(),
                }),
            }),
            WindowKindName::Session => match gap {
                None if gap_bad => None,
                None => {
                    required(self, "gap", "\"30s\"");
                    None
                }
                Some(gap_ms) => Some(WindowKind::Session {
                    gap_ms,
                    max_length_ms: max_length,
                }),
            },
            WindowKindName::Count => match spec.count {
                None => {
                    required(self, "count", "100");
                    None
                }
                Some(count) => {
                    let hop = match spec.hop {
                        Some(HopSpec::Events(h)) => h,
                        _ => count,
                    };
                    let mut fine = !hop_bad;
                    for (key, v) in [("count", count), ("hop", hop)] {
                        if v == 0
                            && (key == "count" || matches!(spec.hop, Some(HopSpec::Events(_))))
                        {
                            let what = self.value_label(&p(key));
                            self.error(&p(key), format!("{what} must be at least 1"));
                            fine = false;
                        }
                    }
                    fine.then_some(WindowKind::Count { count, hop })
                }
            },
        };
        let time = match (&spec.time_field, spec.time_format) {
            (Some(field), format) => TimeSource::Event {
                field: field.clone(),
                format: format.unwrap_or(TimeFormat::Ms),
            },
            (None, Some(_)) => {
                let span = self.key_span(&p("time_format"));
                self.r
                    .error(span, "\"time_format\" without \"time_field\"")
                    .hint("name the payload field that holds the event time, e.g. time_field = \"ts\"; without it windows use processing time");
                ok = false;
                TimeSource::Processing
            }
            (None, None) => TimeSource::Processing,
        };
        if spec.time_field.is_none() {
            for (key, is_set) in [
                ("max_out_of_orderness", spec.max_out_of_orderness.is_some()),
                ("idle_timeout", spec.idle_timeout.is_some()),
            ] {
                if is_set {
                    let span = self.key_span(&p(key));
                    self.r
                        .error(span, format!("\"{key}\" needs event time"))
                        .hint("set time_field to the payload field holding the event time; in processing time events are never out of order");
                    ok = false;
                }
            }
        }
        let max_open = self.at_least_one(
            &p("max_open"),
            spec.max_open,
            crate::window::DEFAULT_MAX_OPEN,
        );
        if let Some(late) = &spec.late_to {
            ok &= self.sink_exists(&p("late_to"), late, sink_names);
        }
        let kind = kind?;
        (ok && max_open.is_some()).then(|| WindowSpec {
            kind,
            group_by: spec.group_by.clone(),
            time,
            max_out_of_orderness_ms: bound,
            allowed_lateness_ms: lateness.unwrap_or(0),
            idle_timeout_ms: idle,
            max_open: max_open.expect("checked"),
            on_full: spec.on_full.unwrap_or(FullPolicy::EmitOldest),
            late_to: spec.late_to.clone(),
        })
    }

    /// See the module doc of `config`: a `${name}` that is neither a builtin
    /// nor a capture of every filter is a payload path, unless it can only
    /// have been meant as a capture.
    fn check_variables(
        &mut self,
        rule: &str,
        filters: &[(TopicFilter, Vec<Seg>)],
        no_json: bool,
        sink: &str,
        uses: &[TemplateUse],
    ) -> bool {
        let all: BTreeSet<&str> = filters
            .iter()
            .flat_map(|(f, _)| f.capture_names())
            .collect();
        let mut ok = true;
        for u in uses {
            for var in u.template.variables() {
                let Variable::Name(name) = var else {
                    continue;
                };
                if name.contains('.') || BUILTINS.contains(&name.as_str()) {
                    continue;
                }
                let what = format!("${{{name}}} in \"{}\" of sink \"{sink}\"", u.field);
                let span = self.span(&u.path);
                if all.contains(name.as_str()) {
                    // (c) a capture of some filters only.
                    if let Some((missing, fp)) = filters
                        .iter()
                        .find(|(f, _)| !f.capture_names().any(|c| c == name))
                    {
                        let (line, _) = self.r.line_column(self.span(fp).start);
                        self.r
                            .error(
                                span,
                                format!(
                                    "{what} is undefined for messages of rule \"{rule}\" from filter \"{}\"",
                                    missing.as_written()
                                ),
                            )
                            .hint(format!(
                                "only some filters of rule \"{rule}\" capture {{{name}}}; add it to the filter at line {line}, or split the rule"
                            ));
                        ok = false;
                    }
                    continue;
                }
                let close = all
                    .iter()
                    .copied()
                    .filter(|c| {
                        let d = strsim::levenshtein(name, c);
                        d <= 2 && d < c.len()
                    })
                    .min_by_key(|c| strsim::levenshtein(name, c));
                if no_json {
                    // (b) no JSON and no plugin fields: only a capture can
                    // give it a value.
                    let hint = match close {
                        Some(c) => format!("did you mean capture \"{c}\"?"),
                        None => format!(
                            "rule \"{rule}\" has format = \"raw\" and no steps, so ${{{name}}} can only be a capture: write {{{name}}} as a level of its filter"
                        ),
                    };
                    self.r
                        .error(
                            span,
                            format!(
                                "{what}: no filter of rule \"{rule}\" defines capture \"{name}\""
                            ),
                        )
                        .hint(hint);
                    ok = false;
                } else if let Some(c) = close {
                    // (a) a near miss of a capture.
                    self.r
                        .error(
                            span,
                            format!("{what} is not a capture of rule \"{rule}\" (it would be read from the payload)"),
                        )
                        .hint(format!("did you mean capture \"{c}\"? write ${{{c}}}"));
                    ok = false;
                }
            }
        }
        ok
    }

    fn unused(
        &mut self,
        plugin_names: &[String],
        sink_names: &[String],
        sinks: &BTreeMap<String, ResolvedSink>,
    ) {
        let rules = self.root.get("rules").map(Node::items).unwrap_or_default();
        let mut used_plugins = BTreeSet::new();
        let mut used_sinks = BTreeSet::new();
        for rule in rules {
            for step in rule.get("steps").map(Node::items).unwrap_or_default() {
                if let Some(name) = step
                    .as_str()
                    .or_else(|| step.get("plugin").and_then(Node::as_str))
                {
                    used_plugins.insert(name.to_owned());
                }
                if let Some(late) = step
                    .get("window")
                    .and_then(|w| w.get("late_to"))
                    .and_then(Node::as_str)
                {
                    used_sinks.insert(late.to_owned());
                }
            }
            for sink in rule.get("to").map(Node::items).unwrap_or_default() {
                if let Some(s) = sink.as_str() {
                    used_sinks.insert(s.to_owned());
                }
            }
            if let Some(s) = rule.get("errors").and_then(Node::as_str) {
                used_sinks.insert(s.to_owned());
            }
        }
        for s in sinks.values() {
            if let Some(d) = &s.config.driver.dead_letter {
                used_sinks.insert(d.clone());
            }
        }
        if rules.is_empty() && self.r.error_count() == 0 {
            self.r
                .warning(
                    0..0,
                    "the manifest has no rules: weir would subscribe to nothing",
                )
                .hint("add a [[rules]] table with name, from and to");
        }
        for name in plugin_names {
            if !used_plugins.contains(name) {
                let span = self.key_span(&at!["plugins", name.as_str()]);
                self.r
                    .warning(span, format!("plugin \"{name}\" is not used by any rule"));
            }
        }
        for name in sink_names {
            if !used_sinks.contains(name) {
                let span = self.key_span(&at!["sinks", name.as_str()]);
                self.r
                    .warning(span, format!("sink \"{name}\" is not used by any rule"));
            }
        }
    }
}

/// Whether the manifest writes a value at `path` (rather than a default).
fn spec_has(root: &Node, path: &[Seg]) -> bool {
    root.at(path).is_some()
}

/// Host, port and TLS of a broker URL.
struct Endpoint {
    host: String,
    port: u16,
    tls: bool,
}

/// Parses `mqtt://host[:port]` / `mqtts://host[:port]`. Errors never quote
/// the URL (it may come from the environment and hold a password).
fn parse_url(text: &str) -> Result<Endpoint, (String, Option<&'static str>)> {
    let url = url::Url::parse(text.trim()).map_err(|e| (e.to_string(), None))?;
    let (default_port, tls) = match url.scheme() {
        "mqtt" => (MQTT_PORT, false),
        "mqtts" => (MQTTS_PORT, true),
        "tcp" => {
            return Err((
                "the scheme is tcp://".into(),
                Some("EMQX's tcp:// is written mqtt:// here"),
            ));
        }
        "ssl" | "tls" => {
            return Err((
                format!("the scheme is {}://", url.scheme()),
                Some("TLS connections are written mqtts://"),
            ));
        }
        "ws" | "wss" => {
            return Err((
                "MQTT over WebSocket is not supported".into(),
                Some("connect to the broker's TCP listener: mqtt:// or mqtts://"),
            ));
        }
        other => {
            return Err((
                format!("the scheme is {other}://, not mqtt:// or mqtts://"),
                None,
            ));
        }
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err((
            "it holds credentials".into(),
            Some("set username and password (e.g. password = \"${env:MQTT_PASSWORD}\") instead"),
        ));
    }
    let host = match url.host() {
        Some(url::Host::Domain(d)) if !d.is_empty() => d.to_owned(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        _ => return Err(("it has no host".into(), None)),
    };
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err(("it has a path, query or fragment".into(), None));
    }
    let port = url.port().unwrap_or(default_port);
    if port == 0 {
        return Err(("port 0 is not a port".into(), None));
    }
    Ok(Endpoint { host, port, tls })
}

/// A Tablestore endpoint: `http(s)://host[:port]` (a path prefix is kept;
/// the service signs `/<Action>` whatever it is). Errors never quote the
/// value (it may come from the environment).
fn check_ots_endpoint(text: &str) -> Result<String, String> {
    let url = url::Url::parse(text.trim()).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "the scheme is {}://, not https:// or http://",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("it has no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("it holds credentials: set access_key_id and access_key_secret instead".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("it has a query or fragment".into());
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// Why `name` cannot be a Tablestore table name.
fn check_table_name(name: &str) -> Result<(), &'static str> {
    let Some(first) = name.bytes().next() else {
        return Err("it is empty");
    };
    if name.len() > 128 {
        return Err("it is longer than 128 characters");
    }
    if first.is_ascii_digit() {
        return Err("it starts with a digit");
    }
    if !name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
        return Err("it has characters other than A-Z, a-z, 0-9 and _");
    }
    Ok(())
}

/// `weir-<hostname>`: unique per machine, and stable across restarts so a
/// persistent session is found again.
fn default_client_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty());
    match host {
        Some(h) => format!("weir-{h}"),
        None => "weir".to_owned(),
    }
}

/// `+` or `#` in the literal text of a topic template.
fn wildcard_in_literal(template: &str) -> Option<char> {
    let mut depth = false;
    let mut chars = template.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        match c {
            '$' if chars.peek().map(|(_, c)| *c) == Some('{') => depth = true,
            '}' if depth => depth = false,
            '+' | '#' if !depth => return Some(c),
            _ => {}
        }
    }
    None
}

/// A plugin load error, naming the file as written in the manifest (the
/// engine's own message names the absolute path).
fn load_error(name: &str, written: &str, e: &PluginError) -> String {
    match e {
        PluginError::Read { cause, .. } => {
            format!("plugin \"{name}\": cannot read \"{written}\": {cause}")
        }
        PluginError::Contract { cause, .. } => {
            format!("plugin \"{name}\": \"{written}\" is {cause}")
        }
        PluginError::Compile { cause, .. } => {
            format!("plugin \"{name}\": cannot compile \"{written}\": {cause:#}")
        }
        PluginError::Link { cause, .. } => {
            format!("plugin \"{name}\": cannot link \"{written}\": {cause:#}")
        }
        other => format!("plugin \"{name}\": {other}"),
    }
}

/// The closest file name to `file`'s in its folder, if one is close.
fn close_file(file: &Path, extension: Option<&str>) -> Option<String> {
    let wanted = file.file_name()?.to_str()?;
    let names: Vec<String> = std::fs::read_dir(file.parent()?)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| extension.is_none_or(|x| Path::new(n).extension().is_some_and(|e| e == x)))
        .collect();
    did_you_mean(wanted, names.iter().map(String::as_str)).map(str::to_owned)
}

/// Where in the file a template error is: exact when the string is written
/// without escapes (the usual case), else the string itself.
fn template_error_span(
    written: &str,
    span: &Range<usize>,
    value: &str,
    e: &TemplateError,
) -> Range<usize> {
    let offset = match e {
        TemplateError::Unterminated { offset }
        | TemplateError::EmptyName { offset }
        | TemplateError::BadPath { offset, .. } => *offset,
    };
    let quote = written.chars().next();
    let body = written.get(1..written.len().saturating_sub(1));
    if matches!(quote, Some('"' | '\'')) && body == Some(value) {
        let at = span.start + 1 + offset;
        at..at + 2
    } else {
        span.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_take_their_default_port_from_the_scheme() {
        let ep = parse_url("mqtt://broker.local").unwrap();
        assert_eq!(
            (ep.host.as_str(), ep.port, ep.tls),
            ("broker.local", 1883, false)
        );
        let ep = parse_url("mqtts://broker.local/").unwrap();
        assert_eq!((ep.port, ep.tls), (8883, true));
        let ep = parse_url("mqtt://10.0.0.2:11883").unwrap();
        assert_eq!((ep.host.as_str(), ep.port), ("10.0.0.2", 11883));
        let ep = parse_url("mqtt://[::1]:1884").unwrap();
        assert_eq!((ep.host.as_str(), ep.port), ("::1", 1884));
    }

    #[test]
    fn bad_broker_urls_are_refused_without_quoting_them() {
        for (url, reason) in [
            ("tcp://h:1883", "the scheme is tcp://"),
            ("ssl://h", "the scheme is ssl://"),
            ("ws://h", "MQTT over WebSocket is not supported"),
            ("http://h", "the scheme is http://, not mqtt:// or mqtts://"),
            ("mqtt://", "it has no host"),
            ("mqtt://u:secret@h", "it holds credentials"),
            ("mqtt://h/topic", "it has a path, query or fragment"),
            ("mqtt://h:0", "port 0 is not a port"),
        ] {
            let (got, _) = parse_url(url)
                .err()
                .unwrap_or_else(|| panic!("{url} accepted"));
            assert_eq!(got, reason, "{url}");
            assert!(!got.contains("secret"));
        }
        assert!(parse_url("localhost:1883").is_err());
    }

    #[test]
    fn wildcards_count_only_in_the_literal_text_of_a_topic() {
        assert_eq!(wildcard_in_literal("alerts/${device}"), None);
        assert_eq!(wildcard_in_literal("alerts/+/x"), Some('+'));
        assert_eq!(wildcard_in_literal("alerts/#"), Some('#'));
        assert_eq!(wildcard_in_literal("a/${x}/b#"), Some('#'));
    }

    #[test]
    fn template_errors_point_inside_a_plain_string() {
        let e = TemplateError::Unterminated { offset: 3 };
        // `topic = "ab/${x"` with the string at 8..16.
        assert_eq!(
            template_error_span("\"ab/${x\"", &(8..16), "ab/${x", &e),
            12..14
        );
        // An escape shifts offsets: point at the whole string instead.
        assert_eq!(
            template_error_span("\"\\u0041/${x\"", &(8..20), "A/${x", &e),
            8..20
        );
    }
}
