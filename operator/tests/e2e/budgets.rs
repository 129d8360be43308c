//! Fleet budgets on the real control plane: two sidecars report what they spend, the operator
//! counts it exactly once into the budget's ledger (a ConfigMap in its namespace), writes
//! `LLMBudget.status` and raises each threshold's Event once; totals survive an operator
//! restart; a sidecar that stops flushes its last report; and each sidecar counts what the
//! others spent, so the cap holds for the fleet, not per pod.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams};
use llmesh_api::LLMBudget;
use llmesh_api::ledger::BudgetLedger;

use crate::harness::{
    Operator, SYSTEM_NS, Sidecar, apply, env, eventually, free_port, http_get, injected_pod_token,
    output_text, serial, webhook_ready,
};

/// $1,000 per million tokens: every token costs exactly 1,000 micro-dollars.
const ROUTE: &str = r#"
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {name: chat}
spec:
  backends:
    - {name: a, provider: mock, model: m-a, prices: {input: "1000", output: "1000"}}
"#;

const BUDGET: &str = r#"
apiVersion: llmesh.io/v1alpha1
kind: LLMBudget
metadata: {name: daily}
spec:
  period: day
  limit: {usd: "5.00"}
  alertThresholds: [1]
"#;

/// The operator, its webhook ready, and a fresh namespace named after `prefix`.
async fn start_operator_in(prefix: &str) -> Result<(Operator, String)> {
    let env = env().await;
    let op = Operator::start(env).await?;
    webhook_ready(env).await?;
    let ns = env.cp.create_namespace(prefix).await?;
    Ok((op, ns))
}

/// `n` injected pods `prefix-0`.. in `ns`, each with its sidecar ready; with `probe`, each has
/// answered one request on route `chat`.
async fn start_fleet(ns: &str, prefix: &str, n: usize, probe: bool) -> Result<Vec<Sidecar>> {
    start_fleet_to(env().await.port, ns, prefix, n, probe).await
}

/// Like [`start_fleet`], the sidecars connecting to the operator replica on `operator_port`.
async fn start_fleet_to(
    operator_port: u16,
    ns: &str,
    prefix: &str,
    n: usize,
    probe: bool,
) -> Result<Vec<Sidecar>> {
    let env = env().await;
    let mut sidecars = Vec::new();
    for i in 0..n {
        let pod = format!("{prefix}-{i}");
        let (_pod, token) = injected_pod_token(env, ns, &pod).await?;
        let cache = env.dir.join(format!("{ns}-{pod}.json"));
        let sc =
            Sidecar::start_to(env, operator_port, &format!("{ns}-{pod}"), &token, &cache).await?;
        sc.wait_ready(Duration::from_secs(10)).await?;
        if probe {
            sc.wait_backend("chat", "a", Duration::from_secs(5)).await?;
        }
        sidecars.push(sc);
    }
    Ok(sidecars)
}

/// The ledger of `budget`, as the operator persisted it (ConfigMap `llmesh-ledger-<uid>` in the
/// operator's namespace).
async fn ledger_of(budget: &LLMBudget) -> Result<BudgetLedger> {
    let uid = budget.metadata.uid.clone().context("uid")?;
    let cms: Api<ConfigMap> = Api::namespaced(env().await.cp.client()?, SYSTEM_NS);
    let cm = cms.get(&format!("llmesh-ledger-{uid}")).await?;
    Ok(serde_json::from_str(
        cm.data
            .as_ref()
            .and_then(|d| d.get("ledger.json"))
            .context("ledger.json")?,
    )?)
}

/// What a sidecar says it spent against `budget` this period (its own, from `/metrics`).
async fn own_spend(sc: &Sidecar, ns: &str) -> Result<(u64, u64)> {
    let (code, text) = http_get(&format!("http://127.0.0.1:{}/metrics", sc.port)).await?;
    if code != 200 {
        bail!("/metrics {code}");
    }
    let value = |name: &str| -> u64 {
        text.lines()
            .find(|l| {
                l.starts_with(name)
                    && l.contains("budget=\"daily\"")
                    && l.contains(&format!("namespace=\"{ns}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    };
    Ok((
        value("llmesh_budget_spent_microdollars"),
        value("llmesh_budget_spent_tokens"),
    ))
}

/// Requests a sidecar answered with 2xx on route `chat` (from `/metrics`).
async fn requests_ok(sc: &Sidecar) -> Result<u64> {
    let (_, text) = http_get(&format!("http://127.0.0.1:{}/metrics", sc.port)).await?;
    Ok(text
        .lines()
        .filter(|l| {
            l.starts_with("llmesh_requests_total{")
                && l.contains("route=\"chat\"")
                && l.contains("status_class=\"2xx\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum())
}

fn usd(micro: u64) -> String {
    format!("${}.{:06}", micro / 1_000_000, micro % 1_000_000)
}

async fn chats(sc: &Sidecar, n: usize) -> Result<()> {
    for i in 0..n {
        let (code, _, body) = sc.chat("chat", &format!("u{i}")).await?;
        if code != 200 {
            bail!("chat {code}: {body}");
        }
    }
    Ok(())
}

/// What `sidecars` say they spent together (micro-dollars, tokens).
async fn fleet_spend(sidecars: &[Sidecar], ns: &str) -> Result<(u64, u64)> {
    let (mut micro, mut tokens) = (0, 0);
    for sc in sidecars {
        let (m, t) = own_spend(sc, ns).await?;
        micro += m;
        tokens += t;
    }
    Ok((micro, tokens))
}

/// Waits until the budget's status shows `micro` spent and `tokens` used.
async fn status_shows(budgets: &Api<LLMBudget>, micro: u64, tokens: u64) -> Result<LLMBudget> {
    status_shows_within(budgets, micro, tokens, Duration::from_secs(15)).await
}

/// Like [`status_shows`], waiting at most `timeout`.
async fn status_shows_within(
    budgets: &Api<LLMBudget>,
    micro: u64,
    tokens: u64,
    timeout: Duration,
) -> Result<LLMBudget> {
    eventually(&format!("status spent {}", usd(micro)), timeout, || async {
        let b = budgets.get("daily").await?;
        let s = b.status.clone().unwrap_or_default();
        if s.spent.as_deref() != Some(usd(micro).as_str()) || s.spent_tokens != Some(tokens) {
            bail!("{s:?}");
        }
        Ok(b)
    })
    .await
}

async fn threshold_events(env_ns: &str) -> Result<Vec<String>> {
    let events: Api<Event> = Api::namespaced(env().await.cp.client()?, env_ns);
    Ok(events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("BudgetThreshold"))
        .map(|e| e.note.unwrap_or_default())
        .collect())
}

#[tokio::test]
async fn two_sidecars_spend_against_one_budget_counted_once_across_restarts() -> Result<()> {
    let _serial = serial().await;
    let env = env().await;
    let (mut op, ns) = start_operator_in("fleet").await?;
    for doc in [ROUTE, BUDGET] {
        let out = apply(env, &ns, doc).await?;
        assert!(out.status.success(), "{}", output_text(&out));
    }
    let mut sidecars = start_fleet(&ns, "web", 2, true).await?;
    chats(&sidecars[0], 3).await?;
    chats(&sidecars[1], 6).await?;
    let (a, b) = (
        own_spend(&sidecars[0], &ns).await?,
        own_spend(&sidecars[1], &ns).await?,
    );
    assert!(
        a.0 > 0 && b.0 > 0,
        "positive control: both spent: {a:?} {b:?}"
    );
    assert_eq!(a.0, a.1 * 1000, "a token costs 1,000 micro-dollars here");
    let (micro, tokens) = (a.0 + b.0, a.1 + b.1);

    // The status is the sum of what both sidecars spent, written within seconds.
    let budgets: Api<LLMBudget> = Api::namespaced(env.cp.client()?, &ns);
    let t0 = std::time::Instant::now();
    let b1 = status_shows(&budgets, micro, tokens).await?;
    eprintln!("last answer -> status.spent exact: {:.1?}", t0.elapsed());
    let s = b1.status.clone().unwrap_or_default();
    assert_eq!(
        s.remaining.as_deref(),
        Some(usd(5_000_000 - micro).as_str())
    );
    let exceeded = s
        .conditions
        .iter()
        .find(|c| c.type_ == "BudgetExceeded")
        .context("BudgetExceeded condition")?;
    assert_eq!(exceeded.status, "False", "{exceeded:?}");
    assert!(
        s.period_start
            .as_deref()
            .is_some_and(|p| p.ends_with("T00:00:00Z")),
        "{s:?}"
    );

    // The ledger: one ConfigMap in the operator's namespace, named after the budget's uid,
    // holding both reporters.
    let ledger = ledger_of(&b1).await?;
    assert_eq!(ledger.total.micro_usd, micro);
    assert_eq!(ledger.reporters.len(), 2, "{ledger:?}");

    // 1% was crossed: one Event, not one per report or per sidecar.
    let events = eventually(
        "a BudgetThreshold Event",
        Duration::from_secs(10),
        || async {
            let e = threshold_events(&ns).await?;
            if e.is_empty() {
                bail!("none yet");
            }
            Ok(e)
        },
    )
    .await?;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert!(events[0].contains("1% of this budget"), "{events:?}");

    // A client sees what is left of the budget for the whole fleet, not for its pod: once the
    // sidecar has heard the fleet's total (every 2 s), sidecar 1's answer says $5 less what
    // both spent.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let left = sidecars[0].chat_headers("chat", "left").await?;
    assert_eq!(
        left.get("x-llmesh-budget-remaining-usd")
            .map(String::as_str),
        Some(usd(5_000_000 - micro).trim_start_matches('$')),
        "{left:?}"
    );
    let (a_now, a_tokens) = own_spend(&sidecars[0], &ns).await?;
    status_shows(&budgets, a_now + b.0, a_tokens + b.1).await?;

    // An operator restart loses nothing and counts nothing twice: more spend lands on top.
    op.stop().await;
    let mut op = Operator::start(env).await?;
    chats(&sidecars[0], 1).await?;
    let a2 = own_spend(&sidecars[0], &ns).await?;
    let (micro, tokens) = (a2.0 + b.0, a2.1 + b.1);
    status_shows(&budgets, micro, tokens).await?;

    // A sidecar that stops flushes what it spent last, at once rather than at the next tick.
    chats(&sidecars[1], 1).await?;
    let b2 = own_spend(&sidecars[1], &ns).await?;
    sidecars[1].stop().await;
    let (micro, tokens) = (a2.0 + b2.0, a2.1 + b2.1);
    status_shows(&budgets, micro, tokens).await?;
    assert_eq!(threshold_events(&ns).await?.len(), 1, "still one Event");

    // The cap holds for the fleet: lower it to what the fleet spent. Sidecar 1 spent less than
    // half of that alone, so only the others' spend (from the operator) can make it refuse
    // while its own spend is still well under the cap.
    let per_request = a.0 / 4; // its first four requests, all alike
    assert!(
        a2.0 + 4 * per_request < micro,
        "positive control: sidecar 1 alone is far under the new cap"
    );
    let patch = serde_json::json!({"spec": {"limit": {"usd": usd(micro).trim_start_matches('$')}}});
    budgets
        .patch("daily", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    eventually(
        "sidecar 1 refuses with the fleet's spend",
        Duration::from_secs(15),
        || async {
            let (code, _, body) = sidecars[0].chat("chat", "late").await?;
            if code != 429 || !body.contains("budget") {
                bail!("{code}: {body}");
            }
            Ok(())
        },
    )
    .await
    .with_context(|| format!("sidecar log:\n{}", sidecars[0].log_text()))?;
    let own_at_refusal = own_spend(&sidecars[0], &ns).await?.0;
    assert!(
        own_at_refusal + 2 * per_request < micro,
        "refused only once its own spend ({own_at_refusal}) neared the cap ({micro}): the fleet's spend was not counted"
    );
    let b3 = eventually("BudgetExceeded", Duration::from_secs(15), || async {
        let b = budgets.get("daily").await?;
        let s = b.status.clone().unwrap_or_default();
        match s.conditions.iter().find(|c| c.type_ == "BudgetExceeded") {
            Some(c) if c.status == "True" => Ok(b),
            other => bail!("{other:?}"),
        }
    })
    .await?;
    let s = b3.status.unwrap_or_default();
    assert_eq!(s.remaining.as_deref(), Some("$0.000000"), "{s:?}");
    for sc in &mut sidecars {
        sc.stop().await;
    }
    op.stop().await;
    Ok(())
}

#[tokio::test]
async fn five_sidecars_under_load_through_an_operator_kill_are_counted_to_the_micro_dollar()
-> Result<()> {
    const SIDECARS: usize = 5;
    const PER_SIDECAR: usize = 4; // concurrency 20 in all
    const REQUESTS: usize = 12; // per client
    let _serial = serial().await;
    let env = env().await;
    let (mut op, ns) = start_operator_in("fleet-load").await?;
    let budget = BUDGET.replace(r#"usd: "5.00""#, r#"usd: "1000.00""#);
    for doc in [ROUTE, budget.as_str()] {
        let out = apply(env, &ns, doc).await?;
        assert!(out.status.success(), "{}", output_text(&out));
    }
    let mut sidecars = start_fleet(&ns, "load", SIDECARS, true).await?;

    // 20 clients; a second in, the operator is SIGKILLed, and restarted 3 s later.
    let load = futures::future::join_all(sidecars.iter().flat_map(|sc| {
        (0..PER_SIDECAR).map(move |c| async move {
            let mut ok = 0;
            for i in 0..REQUESTS {
                let (code, _, body) = sc.chat("chat", &format!("c{c}-{i}")).await?;
                anyhow::ensure!(code == 200, "{code}: {body}");
                ok += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            anyhow::Ok(ok)
        })
    }));
    let chaos = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        op.kill().await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        Operator::start(env).await
    };
    let (answered, restarted) = tokio::join!(load, chaos);
    let mut op = restarted?;
    let answered: usize = answered.into_iter().sum::<Result<usize>>()?;
    assert_eq!(
        answered,
        SIDECARS * PER_SIDECAR * REQUESTS,
        "every request answered"
    );
    let done = std::time::Instant::now();

    for sc in &sidecars {
        assert!(
            own_spend(sc, &ns).await?.0 > 0,
            "positive control: every sidecar spent"
        );
    }
    let (micro, tokens) = fleet_spend(&sidecars, &ns).await?;
    let budgets: Api<LLMBudget> = Api::namespaced(env.cp.client()?, &ns);
    let b = status_shows(&budgets, micro, tokens).await?;
    eprintln!(
        "{SIDECARS} sidecars, {answered} requests, operator killed mid-load: status exact ({}) {:.1?} after the last answer",
        usd(micro),
        done.elapsed()
    );
    let (_, metrics) = http_get(&format!("http://127.0.0.1:{}/metrics", env.admin_port)).await?;
    let metric = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let (counted, writes) = (
        metric("llmesh_operator_ledger_updates_total{result=\"counted\"}"),
        metric("llmesh_operator_ledger_writes_total"),
    );
    eprintln!("the restarted operator counted {counted} reports in {writes} ledger writes");
    assert!(
        counted >= writes && writes > 0.0,
        "{counted} reports, {writes} writes"
    );
    let ledger = ledger_of(&b).await?;
    assert_eq!(ledger.reporters.len(), SIDECARS, "{:?}", ledger.reporters);
    let mut served = 0;
    for sc in &sidecars {
        served += requests_ok(sc).await?;
    }
    assert!(served >= answered as u64, "{served} < {answered}");
    assert_eq!(ledger.total.requests, served, "each request counted once");
    for sc in &mut sidecars {
        sc.stop().await;
    }
    op.stop().await;
    Ok(())
}

#[tokio::test]
async fn with_the_operator_away_each_sidecar_spends_only_its_share_of_what_was_left() -> Result<()>
{
    let _serial = serial().await;
    let env = env().await;
    let (mut op, ns) = start_operator_in("fleet-away").await?;
    let budget = BUDGET.replace(r#"usd: "5.00""#, r#"usd: "1.00""#);
    for doc in [ROUTE, budget.as_str()] {
        let out = apply(env, &ns, doc).await?;
        assert!(out.status.success(), "{}", output_text(&out));
    }
    let mut sidecars = start_fleet(&ns, "away", 2, true).await?;
    chats(&sidecars[1], 3).await?;
    let (spent, tokens) = fleet_spend(&sidecars, &ns).await?;
    let budgets: Api<LLMBudget> = Api::namespaced(env.cp.client()?, &ns);
    status_shows(&budgets, spent, tokens).await?;
    // Both have heard the fleet's total (reports every second, queries every 2 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    op.stop().await;
    // Past the 10 s a fleet view stays fresh: sidecar 1 may spend half of what was left.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let before = own_spend(&sidecars[0], &ns).await?.0;
    let per_request = before; // its one wait_backend request
    let share = (1_000_000 - spent) / 2;
    let mut answered = 0;
    loop {
        let (code, _, body) = sidecars[0].chat("chat", "away").await?;
        if code == 429 {
            assert!(body.contains("budget"), "{body}");
            break;
        }
        assert_eq!(code, 200, "{body}");
        answered += 1;
        assert!(answered < 200, "never refused: the share is not enforced");
    }
    let used = own_spend(&sidecars[0], &ns).await?.0 - before;
    eprintln!(
        "operator away: sidecar 1 spent {} of its share {} ({answered} requests) before refusing",
        usd(used),
        usd(share)
    );
    assert!(
        used <= share + per_request && used + 2 * per_request >= share,
        "spent {used} with a share of {share} (a request costs about {per_request})"
    );
    for sc in &mut sidecars {
        sc.stop().await;
    }
    Ok(())
}

#[tokio::test]
async fn a_route_requests_per_minute_holds_across_four_sidecars() -> Result<()> {
    const LIMIT: usize = 20;
    let _serial = serial().await;
    let env = env().await;
    let (mut op, ns) = start_operator_in("fleet-rpm").await?;
    let route = format!("{ROUTE}  limits: {{requestsPerMinute: {LIMIT}}}\n");
    let out = apply(env, &ns, &route).await?;
    assert!(out.status.success(), "{}", output_text(&out));
    // No probe request: it would take from the buckets.
    let mut sidecars = start_fleet(&ns, "rpm", 4, false).await?;
    // Each asks for the fleet's view within 2 s (a query: no budget here, nothing spent).
    tokio::time::sleep(Duration::from_secs(4)).await;
    // A burst of the whole limit at every sidecar: 80 requests.
    let mut admitted = 0;
    let mut refused = 0;
    for sc in &sidecars {
        for i in 0..LIMIT {
            let (code, _, body) = sc.chat("chat", &format!("b{i}")).await?;
            match code {
                200 => admitted += 1,
                429 => refused += 1,
                _ => bail!("{code}: {body}"),
            }
        }
    }
    eprintln!("requestsPerMinute {LIMIT} across 4 sidecars: a burst of 80 admitted {admitted}");
    // Each holds a quarter of the limit (5), plus what refills during the burst.
    assert!(
        (LIMIT - 2..=LIMIT + 2).contains(&admitted),
        "admitted {admitted} of 80 with a fleet limit of {LIMIT}"
    );
    assert_eq!(admitted + refused, 4 * LIMIT);
    for sc in &mut sidecars {
        sc.stop().await;
    }
    op.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_follower_takes_the_reports_and_a_new_leader_writes_status_after_the_old_one_dies()
-> Result<()> {
    let _serial = serial().await;
    let env = env().await;
    // Replica A leads; replica B follows, and the sidecars talk to B only.
    let (mut a, ns) = start_operator_in("fleet-replicas").await?;
    let (b_port, b_admin) = (free_port(), free_port());
    let mut b = Operator::replica(env, b_port, b_admin).await?;
    for doc in [ROUTE, BUDGET] {
        let out = apply(env, &ns, doc).await?;
        assert!(out.status.success(), "{}", output_text(&out));
    }
    let mut sidecars = start_fleet_to(b_port, &ns, "rep", 2, true).await?;
    let leader = |admin: u16| async move {
        let (_, m) = http_get(&format!("http://127.0.0.1:{admin}/metrics")).await?;
        anyhow::Ok(m.lines().any(|l| l == "llmesh_operator_leader 1"))
    };
    assert!(
        leader(env.admin_port).await? && !leader(b_admin).await?,
        "A leads, B follows"
    );
    chats(&sidecars[0], 2).await?;
    chats(&sidecars[1], 3).await?;
    let (micro, tokens) = fleet_spend(&sidecars, &ns).await?;
    // B persisted every report (the sidecars reach no other replica); A wrote the status.
    let budgets: Api<LLMBudget> = Api::namespaced(env.cp.client()?, &ns);
    status_shows(&budgets, micro, tokens).await?;
    let (_, b_metrics) = http_get(&format!("http://127.0.0.1:{b_admin}/metrics")).await?;
    assert!(
        b_metrics
            .lines()
            .any(|l| l.starts_with("llmesh_operator_ledger_writes_total ") && !l.ends_with(" 0")),
        "B wrote the ledger:\n{b_metrics}"
    );

    // A dies without releasing its Lease; B takes over once it runs out, and the spend made
    // meanwhile reaches the status it writes.
    a.kill().await;
    chats(&sidecars[0], 2).await?;
    let t0 = std::time::Instant::now();
    let (micro, tokens) = fleet_spend(&sidecars, &ns).await?;
    // The target: a new leader writes status within 15 s of the old one's death.
    status_shows_within(&budgets, micro, tokens, Duration::from_secs(15)).await?;
    eprintln!(
        "leader SIGKILLed: the follower wrote the exact status {:.1?} later",
        t0.elapsed()
    );
    assert!(leader(b_admin).await?, "B leads now");
    for sc in &mut sidecars {
        sc.stop().await;
    }
    b.stop().await;
    Ok(())
}
