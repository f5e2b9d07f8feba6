//! `keyless check`: loads the configuration as `keyless serve` does, reads each provider's
//! subject token, tries each exchange once and prints a report a human can act on: what is
//! wrong, how to fix it, and the cloud-side binding the token needs.
//!
//! What each cloud expects (audience, binding, error hints) comes from the adapters' `diagnose`
//! modules; this file only runs them in order and lays the answers out. It never prints a token
//! or a credential: only claims, expiry times and the adapters' error messages, which never
//! contain secrets.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keyless_core::clock::SystemClock;
use keyless_core::{Attempt, Claims, Context, ExchangeError, Metrics, SourceSpec, SubjectToken};
use keyless_provider::Diagnosis;

use crate::config::{Config, Overrides};
use crate::providers::{self, Origin, Sections, StartError};

/// One exchange per configured credential. Each upstream request is bounded by
/// `cache.exchange_timeout` in the provider's own client (`keyless_provider::upstream`), as in
/// `serve`; this bounds the whole diagnosis (a GCP exchange is two requests) as a backstop.
/// An exchange slower than [`crate::exec::PROGRESS_AFTER`] gets one progress line on stderr.
async fn exchange_once(d: &dyn Diagnosis, token: &SubjectToken, limit: Duration) -> Vec<Attempt> {
    let since = keyless_core::clock::Clock::now(&SystemClock);
    let exchange = tokio::time::timeout(limit.saturating_mul(3), d.exchange_once(token));
    tokio::pin!(exchange);
    let outcome = tokio::select! {
        outcome = &mut exchange => outcome,
        () = tokio::time::sleep(crate::exec::PROGRESS_AFTER) => {
            crate::exec::progress_line("keyless check", &d.identity(), since);
            exchange.await
        }
    };
    match outcome {
        Ok(attempts) => attempts,
        Err(_) => vec![Attempt {
            what: "the exchange".to_owned(),
            result: Err(ExchangeError::retryable(format!(
                "did not finish within cache.exchange_timeout ({})",
                humantime::format_duration(limit)
            ))
            .with_hint("the token service is slow or unreachable from here: check egress and HTTPS_PROXY")),
        }],
    }
}

/// The report, printed as it is built; counts the problems.
struct Report {
    problems: Vec<String>,
}

/// Width of the label column.
const LABEL: usize = 12;

impl Report {
    #[allow(clippy::print_stdout)] // the report is the command's output
    fn line(&self, text: &str) {
        println!("{text}");
    }

    /// `label` then `text`; further lines of `text` (TOML errors have several) stay in its column.
    fn item(&self, label: &str, text: &str) {
        for (i, line) in text.lines().enumerate() {
            let label = if i == 0 { label } else { "" };
            self.line(format!("  {label:<LABEL$}{line}").trim_end());
        }
    }

    /// A continuation line under the last item.
    fn more(&self, text: &str) {
        self.item("", text);
    }

    fn problem(&mut self, provider: &str, label: &str, text: &str, fix: Option<&str>) {
        self.item(label, &format!("PROBLEM: {text}"));
        if let Some(fix) = fix {
            self.more(&format!("fix: {fix}"));
        }
        self.problems.push(format!("{provider} {label}"));
    }
}

/// Runs the check; exit 0 when everything works, 1 on any problem.
pub async fn run(file: Option<PathBuf>) -> ExitCode {
    // Logs would interleave with the report: only on request.
    if let Ok(filter) = std::env::var("KEYLESS_LOG")
        && let Err(e) = crate::logging::init(Some(&filter), crate::config::LogFormat::Text)
    {
        return crate::fail(&e);
    }
    let mut report = Report { problems: Vec::new() };
    match &file {
        Some(path) => report.line(&format!("keyless check: {}", path.display())),
        None => report.line("keyless check: no --config; KEYLESS_* and the clouds' environment variables"),
    }
    report.line("");
    match crate::load_config(file.as_deref(), &Overrides::default()) {
        Ok((config, sections, skipped)) => check_config(&mut report, config, sections, &skipped).await,
        Err(e) => report.problem("keyless", "config", &e, None),
    }
    report.line("");
    if report.problems.is_empty() {
        report.line("result: ok: every configured identity got a credential");
        ExitCode::SUCCESS
    } else {
        let n = report.problems.len();
        report.line(&format!(
            "result: {n} problem{} ({}): fix {}, then run keyless check again",
            if n == 1 { "" } else { "s" },
            report.problems.join(", "),
            if n == 1 { "it" } else { "them" }
        ));
        ExitCode::from(1)
    }
}

async fn check_config(report: &mut Report, config: Config, sections: Sections, skipped: &[String]) {
    report.item("config", &format!("ok: listen {}, admin_listen {}", config.listen, config.admin_listen));
    for name in skipped {
        report.more(&format!("note: {name} is not a keyless setting and is ignored"));
    }
    let ctx = Context::new(Arc::new(SystemClock), Metrics::new(), config.cache_policy(), config.watch_options());
    let limit = config.cache.exchange_timeout;
    let env = |name: &str| std::env::var(name).ok();
    let configured = providers::configure_all(sections, &ctx, &env);
    if configured.is_empty() {
        report.line("");
        report.problem("keyless", "providers", &StartError::NothingConfigured.to_string(), None);
        return;
    }
    // Exactly the check `serve` makes before it listens.
    let valid = configured.iter().filter_map(|p| p.configured.as_ref().ok().map(|c| c.as_ref()));
    if let Err(collision) = providers::check_routes(valid) {
        report.problem("keyless", "routes", &collision.to_string(), None);
    }
    for p in configured {
        report.line("");
        match p.configured.and_then(|c| c.diagnosis(&ctx).map_err(|e| e.to_string())) {
            Ok(d) => check_provider(report, p.name, p.origin, d.as_ref(), &ctx, limit).await,
            Err(e) => {
                report.line(&format!("{}:", p.name));
                report.problem(p.name, "config", &format!("{e} (from {})", p.origin), None);
            }
        }
    }
}

async fn check_provider(
    report: &mut Report,
    name: &'static str,
    origin: Origin,
    d: &dyn Diagnosis,
    ctx: &Context,
    limit: Duration,
) {
    report.line(&format!("{name}: {}", d.identity()));
    report.item("config", &format!("ok (from {origin})"));
    let source = d.token_source();
    report.item("token", &source.to_string());
    if !matches!(source, SourceSpec::File(_)) {
        report.more("fetched once for this check (nothing of the token itself is shown)");
    }
    // A fetch (a slow command, an Actions endpoint) may outlast what opening the source waits for.
    let token = match ctx.token_source(&source).await.first_read().await {
        Ok(token) => token,
        Err(e) => {
            report.problem(name, "token", &e.to_string(), None);
            report.item("exchange", "not tried: there is no token to exchange");
            print_binding(report, d, None, d.expected_audience());
            return;
        }
    };
    let claims = token.claims();
    let now = ctx.clock.now();
    report.item("claims", &describe_claims(claims, now));
    check_claims(report, name, claims, now, &source);

    let attempts = exchange_once(d, &token, limit).await;
    let all_ok = attempts.iter().all(|a| a.result.is_ok());
    let expected = d.expected_audience().to_owned();
    let source = d.audience_source();
    let binding_audience = if d.accepts_audience(&claims.aud) {
        report.item("audience", &format!("ok: the token has {expected}, {source}"));
        expected.clone()
    } else if all_ok && !claims.aud.is_empty() {
        report.item(
            "audience",
            &format!(
                "note: the token has [{}], not {expected} ({source}), and the cloud accepted it",
                claims.aud.join(", ")
            ),
        );
        claims.aud[0].clone()
    } else {
        let has =
            if claims.aud.is_empty() { "no aud claim".to_owned() } else { format!("[{}]", claims.aud.join(", ")) };
        let fix = d.audience_fix(claims);
        report.problem(
            name,
            "audience",
            &format!("{name} expects {expected}, {source}; the token has {has}"),
            Some(&fix),
        );
        expected.clone()
    };
    for attempt in &attempts {
        match &attempt.result {
            Ok(expires_at) => report
                .item("exchange", &format!("ok: {}: valid until {}", attempt.what, describe_time(*expires_at, now))),
            Err(e) => {
                let code = e.code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default();
                report.item("exchange", &format!("PROBLEM: {} failed{code}{}", attempt.what, throttled(e)));
                report.more(&e.message);
                if let Some(hint) = &e.hint {
                    report.more(&format!("fix: {hint}"));
                }
                report.problems.push(format!("{name} exchange"));
            }
        }
    }
    print_binding(report, d, Some(claims), &binding_audience);
}

/// How a throttled exchange is told apart: nothing is wrong with the configuration, the token
/// service is busy (docs/fleet.md).
fn throttled(e: &ExchangeError) -> String {
    if e.class != keyless_core::ErrorClass::Throttled {
        return String::new();
    }
    match e.retry_after {
        Some(wait) => {
            format!(": throttled by the token service, which asks to retry after {}", humantime::format_duration(wait))
        }
        None => ": throttled by the token service".to_owned(),
    }
}

/// Problems the claims show before any cloud is asked.
fn check_claims(report: &mut Report, name: &str, claims: &Claims, now: SystemTime, source: &SourceSpec) {
    if let Some(exp) = claims.exp.filter(|exp| *exp <= now) {
        report.problem(
            name,
            "expiry",
            &format!("the token expired at {}", describe_time(exp, now)),
            Some(&expiry_fix(source)),
        );
    }
    if claims.iss.is_none() || claims.sub.is_none() {
        let (what, fix) = match source {
            SourceSpec::File(_) => (
                "it is not a Kubernetes service-account token",
                "point token_file at a projected serviceAccountToken volume",
            ),
            _ => (
                "the cloud cannot match it to a trust",
                "the source must give an OIDC ID token (a JWT with iss and sub)",
            ),
        };
        report.problem(name, "claims", &format!("the token has no iss or no sub claim: {what}"), Some(fix));
    }
    if let SourceSpec::GithubActions { .. } = source {
        report.more(
            "note: GitHub sets sub to repo:ORG/REPO:environment:NAME when the job names an environment, else \
             repo:ORG/REPO:ref:refs/heads/BRANCH (tags: ref:refs/tags/TAG; pull requests: pull_request); the \
             binding below trusts exactly this job's sub",
        );
    }
}

/// How to get an unexpired token from `source`.
fn expiry_fix(source: &SourceSpec) -> String {
    match source {
        SourceSpec::File(token_file) => format!(
            "{} must be the token the kubelet projects (a serviceAccountToken volume source), which it rotates \
             before expiry; a copied token goes stale. If it is projected, check the node's clock",
            token_file.display()
        ),
        SourceSpec::GithubActions { .. } => {
            "a GitHub Actions token lives 5 minutes and keyless fetches a new one for every read: check this \
             machine's clock"
                .to_owned()
        }
        SourceSpec::Env(var) => format!(
            "the token in {var} is fixed for the process (GitLab id_tokens live as long as the job): run keyless in \
             the job that received it"
        ),
        SourceSpec::Url(_) | SourceSpec::Command(_) => {
            "the source returned an expired token: fix the service or program that issues it".to_owned()
        }
    }
}

fn print_binding(report: &Report, d: &dyn Diagnosis, claims: Option<&Claims>, audience: &str) {
    let intro = match claims {
        Some(_) => "what the cloud must hold for this token:",
        None => "what the cloud must hold (placeholders in capitals: the token could not be read):",
    };
    report.item("binding", intro);
    for line in d.binding(claims, audience) {
        report.more(&format!("  {line}"));
    }
}

fn describe_claims(claims: &Claims, now: SystemTime) -> String {
    let or_none = |v: &Option<String>| v.clone().unwrap_or_else(|| "<none>".to_owned());
    let mut text = format!("iss={} sub={} aud=[{}]", or_none(&claims.iss), or_none(&claims.sub), claims.aud.join(", "));
    match claims.exp {
        Some(exp) => {
            let _ = write!(text, " exp={}", describe_time(exp, now));
        }
        None => text.push_str(" exp=<none>"),
    }
    text
}

/// `2026-11-22T14:41:07Z (in 59m 58s)` or `(... ago)`, to the second.
fn describe_time(t: SystemTime, now: SystemTime) -> String {
    let stamp = humantime::format_rfc3339_seconds(t);
    let whole = |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string();
    match t.duration_since(now) {
        Ok(left) => format!("{stamp} (in {})", whole(left)),
        Err(e) => format!("{stamp} ({} ago)", whole(e.duration())),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_throttled_exchange_is_told_apart_from_a_configuration_problem() {
        let with = ExchangeError::throttled("HTTP 429", Some(Duration::from_secs(60)));
        assert_eq!(throttled(&with), ": throttled by the token service, which asks to retry after 1m");
        let without = ExchangeError::throttled("Rate exceeded", None);
        assert_eq!(throttled(&without), ": throttled by the token service");
        assert_eq!(throttled(&ExchangeError::terminal("AccessDenied")), "");
    }
}
