//! Per-pod sidecar settings, as `llmesh.io/sidecar-*` annotations on the pod (Istio's
//! `sidecar.istio.io/proxyCPU` and Linkerd's `config.linkerd.io/proxy-cpu-request` are the
//! models). Each value is checked here, so a bad one is refused by the webhook naming the
//! annotation, rather than by the API server naming a container the user never wrote.

use k8s_openapi::api::core::v1::Pod;

use super::SidecarTemplate;

/// CPU request of the sidecar (`100m`, `0.5`).
pub const CPU_REQUEST: &str = "llmesh.io/sidecar-cpu-request";
/// CPU limit of the sidecar.
pub const CPU_LIMIT: &str = "llmesh.io/sidecar-cpu-limit";
/// Memory request of the sidecar (`64Mi`).
pub const MEMORY_REQUEST: &str = "llmesh.io/sidecar-memory-request";
/// Memory limit of the sidecar.
pub const MEMORY_LIMIT: &str = "llmesh.io/sidecar-memory-limit";
/// The sidecar's `--max-in-flight`: generation requests at once (0: no limit).
pub const MAX_IN_FLIGHT: &str = "llmesh.io/sidecar-max-in-flight";
/// The sidecar's log level: `error`, `warn`, `info`, `debug` or `trace`.
pub const LOG_LEVEL: &str = "llmesh.io/sidecar-log-level";

/// Every annotation the injector reads.
pub const ALL: [&str; 6] = [
    CPU_REQUEST,
    CPU_LIMIT,
    MEMORY_REQUEST,
    MEMORY_LIMIT,
    MAX_IN_FLIGHT,
    LOG_LEVEL,
];

/// Annotations under this prefix are the injector's: an unknown one is a typo, refused.
const PREFIX: &str = "llmesh.io/sidecar-";

const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// The sidecar for `pod`: `t` with the pod's annotations applied, or the refusal to show, which
/// names the annotation and says what would be accepted.
pub fn apply(pod: &Pod, t: &SidecarTemplate) -> Result<SidecarTemplate, String> {
    let mut t = t.clone();
    let Some(annotations) = pod.metadata.annotations.as_ref() else {
        return Ok(t);
    };
    for (name, value) in annotations.iter().filter(|(k, _)| k.starts_with(PREFIX)) {
        let value = value.trim();
        let bad = |what: &str| format!("llmesh: annotation {name}: `{value}` {what}");
        match name.as_str() {
            CPU_REQUEST | CPU_LIMIT => {
                quantity(value).ok_or_else(|| bad("is not a CPU quantity (e.g. 100m, 0.5, 2)"))?;
                if name == CPU_REQUEST {
                    t.cpu_request = value.into();
                } else {
                    t.cpu_limit = Some(value.into());
                }
            }
            MEMORY_REQUEST | MEMORY_LIMIT => {
                quantity(value)
                    .ok_or_else(|| bad("is not a memory quantity (e.g. 64Mi, 256Mi, 1Gi)"))?;
                if name == MEMORY_REQUEST {
                    t.memory_request = value.into();
                } else {
                    t.memory_limit = value.into();
                }
            }
            MAX_IN_FLIGHT => {
                t.max_in_flight = value.parse().map_err(|_| {
                    bad("is not a whole number of requests (e.g. 256; 0 means no limit)")
                })?;
            }
            LOG_LEVEL => {
                if !LEVELS.contains(&value) {
                    return Err(bad(&format!("is not a log level: {}", LEVELS.join(", "))));
                }
                t.log_level = Some(value.into());
            }
            _ => {
                return Err(format!(
                    "llmesh: annotation {name} is not one llmesh reads; the sidecar's are {}",
                    ALL.join(", ")
                ));
            }
        }
    }
    within_limit(
        "CPU",
        (&t.cpu_request, CPU_REQUEST),
        t.cpu_limit.as_deref(),
        CPU_LIMIT,
        annotations.contains_key(CPU_LIMIT),
    )?;
    within_limit(
        "memory",
        (&t.memory_request, MEMORY_REQUEST),
        Some(&t.memory_limit),
        MEMORY_LIMIT,
        annotations.contains_key(MEMORY_LIMIT),
    )?;
    Ok(t)
}

/// A request above its limit, which the API server would refuse naming the container.
fn within_limit(
    what: &str,
    (request, request_annotation): (&str, &str),
    limit: Option<&str>,
    limit_annotation: &str,
    limit_annotated: bool,
) -> Result<(), String> {
    let Some(limit) = limit else { return Ok(()) };
    match (quantity(request), quantity(limit)) {
        (Some(r), Some(l)) if r > l => {
            let whose = if limit_annotated {
                format!("set by {limit_annotation}")
            } else {
                format!("the operator's default; raise it with {limit_annotation}")
            };
            Err(format!(
                "llmesh: the sidecar's {what} request {request} ({request_annotation} or the operator's default) \
                 is above its {what} limit {limit} ({whose})"
            ))
        }
        _ => Ok(()),
    }
}

/// `LLMESH_LOG` for a level: the sidecar's own logs at `debug` and `trace`, not its libraries'.
pub fn log_filter(level: &str) -> String {
    match level {
        "debug" | "trace" => format!("info,llmesh_sidecar={level}"),
        _ => level.into(),
    }
}

/// A Kubernetes resource quantity (`100m`, `0.5`, `64Mi`, `1e3`), in base units; `None` if it
/// is not one, or is negative.
pub fn quantity(s: &str) -> Option<f64> {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(end);
    let number = number.strip_prefix('+').unwrap_or(number);
    let digits = number.chars().filter(char::is_ascii_digit).count();
    if digits == 0 || number.matches('.').count() > 1 || number.contains('+') {
        return None;
    }
    let n: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => {
            let exp = &e[1..];
            let unsigned = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            10f64.powi(exp.parse().ok()?)
        }
        _ => return None,
    };
    Some(n * scale)
}
