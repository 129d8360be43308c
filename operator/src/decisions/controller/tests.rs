//! The bookkeeping of written statuses, without a cluster.

use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::ObjectRef;
use llmesh_api::{LLMRoute, LLMRouteStatus};

use super::{Error, Written};

fn status(generation: i64) -> LLMRouteStatus {
    LLMRouteStatus {
        observed_generation: Some(generation),
        ..Default::default()
    }
}

type Outcome = Result<(ObjectRef<LLMRoute>, Action), controller::Error<Error, std::io::Error>>;

fn gone(ns: &str, name: &str) -> Outcome {
    Err(controller::Error::ObjectNotFound(Box::new(
        ObjectRef::<LLMRoute>::new(name).within(ns).erase(),
    )))
}

#[test]
fn a_written_status_is_read_back_only_for_the_same_object() {
    let w = Written::default();
    let key = ("team".to_string(), "chat".to_string());
    w.record(key.clone(), "uid-1".into(), status(3));
    assert_eq!(w.get(&key, "uid-1"), Some(status(3)));
    assert_eq!(
        w.get(&key, "uid-2"),
        None,
        "a namesake created after a delete starts from its own stored status"
    );
    w.record(key.clone(), "uid-2".into(), status(1));
    assert_eq!(w.get(&key, "uid-2"), Some(status(1)));
    assert_eq!(w.len(), 1, "one entry per object name");
}

#[test]
fn written_statuses_shrink_when_their_objects_are_deleted() {
    let w = Written::default();
    for i in 0..100 {
        w.record(
            ("team".into(), format!("r{i}")),
            format!("uid-{i}"),
            status(1),
        );
    }
    assert_eq!(w.len(), 100);
    // A successful reconcile and a failed one keep the entry.
    let ok: Outcome = Ok((ObjectRef::new("r0").within("team"), Action::await_change()));
    w.settle(&ok);
    let failed: Outcome = Err(controller::Error::ReconcilerFailed(
        Error::Status(kube::Error::LinesCodecMaxLineLengthExceeded),
        Box::new(ObjectRef::<LLMRoute>::new("r1").within("team").erase()),
    ));
    w.settle(&failed);
    assert_eq!(w.len(), 100);
    // The controller finding each object gone from the store forgets it.
    for i in 0..60 {
        w.settle(&gone("team", &format!("r{i}")));
    }
    assert_eq!(w.len(), 40);
    assert_eq!(w.get(&("team".into(), "r59".into()), "uid-59"), None);
    assert_eq!(
        w.get(&("team".into(), "r60".into()), "uid-60"),
        Some(status(1))
    );
    // Same name in another namespace is another object.
    w.settle(&gone("other", "r60"));
    assert_eq!(w.len(), 40);
    for i in 60..100 {
        w.settle(&gone("team", &format!("r{i}")));
    }
    assert!(w.is_empty());
}
