#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Trace context across the bridge: a `traceparent` on an input record comes out as a child
//! context on its Rush copy and on a return-path record, production copies keep theirs
//! byte for byte, and the hop spans reach an OTLP/HTTP receiver (a small one in this test).

mod common;

use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::invariant::TID;
use common::{Bridge, Fixture, Input, ORDERS_ROUTE};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const RETURN_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const RETURN_PARENT: &str = "b7ad6b7169203331";

/// Accepts OTLP/HTTP posts and keeps their bodies.
fn otlp_receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let keep = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let keep = keep.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut out = stream;
                loop {
                    let mut len = 0usize;
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut line = String::new();
                        reader.read_line(&mut line).unwrap();
                        if line == "\r\n" || line.is_empty() {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; len];
                    reader.read_exact(&mut body).unwrap();
                    keep.lock().unwrap().push(format!("{} {}", request_line.trim(), String::from_utf8_lossy(&body)));
                    let _ = out
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}");
                }
            });
        }
    });
    (url, bodies)
}

fn traced(i: usize, user: &str, trace: &str, parent: &str) -> Input {
    Input {
        partition: 0,
        key: None,
        payload: Some(b"{}".to_vec()),
        headers: vec![
            (TID.into(), Some(i.to_string().into_bytes())),
            ("x-user-id".into(), Some(user.as_bytes().to_vec())),
            ("traceparent".into(), Some(format!("00-{trace}-{parent}-01").into_bytes())),
            ("tracestate".into(), Some(b"vendor=abc".to_vec())),
        ],
        timestamp: 1_760_000_000_000 + i as i64,
    }
}

/// `(trace id, span id)` of a traceparent header value.
fn ids(tp: &[u8]) -> (String, String) {
    let s = String::from_utf8(tp.to_vec()).unwrap();
    let parts: Vec<&str> = s.split('-').collect();
    assert_eq!(parts.len(), 4, "{s}");
    (parts[1].to_owned(), parts[2].to_owned())
}

#[test]
fn trace_context_is_continued_and_hop_spans_are_exported() {
    let (otlp, bodies) = otlp_receiver();
    let f = Fixture::builder()
        .topic("orders", 1)
        .whitelist(1, &[("U1", &["payment"])])
        .group("bridge-tracing")
        .routes(&format!("{ORDERS_ROUTE}return_path = true\n"))
        .toml(&format!(
            "[telemetry]\notlp_endpoint = \"{otlp}\"\notlp_protocol = \"http/json\"\nservice_name = \"bridge-under-test\"\n"
        ))
        .build();
    let (prod, rush) = (&f.prod, &f.rush);
    let bridge = Bridge::start(&f.config);
    common::wait_until("the bridge did not create rush:orders", Instant::now() + Duration::from_secs(30), || {
        common::topic_exists(&rush.bootstrap, "orders")
    });
    let input = traced(1, "U1", TRACE, PARENT);
    common::produce(&prod.bootstrap, "orders", std::slice::from_ref(&input));
    common::produce(&rush.bootstrap, "orders", &[traced(2, "U9", RETURN_TRACE, RETURN_PARENT)]);

    let t = Duration::from_secs(30);
    let rush_copy = common::read_all(&rush.bootstrap, "orders.payment", 1, t).pop().expect("no Rush copy");
    let (trace, span) = ids(rush_copy.header("traceparent").unwrap());
    assert_eq!(trace, TRACE, "the Rush copy continues the input's trace");
    assert_ne!(span, PARENT, "as a child: a new span id");
    assert_eq!(rush_copy.header("tracestate"), Some(b"vendor=abc".as_slice()));
    assert_eq!(rush_copy.headers.iter().filter(|(k, _)| k == "traceparent").count(), 1);

    // Production copies are byte-identical, trace context included.
    let prod_copies = common::read_all(&prod.bootstrap, "orders.shipping", 2, t);
    let original = prod_copies.iter().find(|r| r.header(TID) == Some(b"1".as_slice())).unwrap();
    assert_eq!(original.headers, input.headers);
    let returned = prod_copies.iter().find(|r| r.header(TID) == Some(b"2".as_slice())).unwrap();
    let (rtrace, rspan) = ids(returned.header("traceparent").unwrap());
    assert_eq!(rtrace, RETURN_TRACE);
    assert_ne!(rspan, RETURN_PARENT);

    bridge.stop(Duration::from_secs(30));
    let all =
        common::wait_for("hop spans never reached the receiver", Instant::now() + Duration::from_secs(15), || {
            let all = bodies.lock().unwrap().join("\n");
            if all.contains(&span) && all.contains(&rspan) { Ok(all) } else { Err(all) }
        });
    assert!(all.starts_with("POST /v1/traces"), "{all}");
    for want in [
        TRACE,
        PARENT,
        RETURN_TRACE,
        RETURN_PARENT,
        "bridge-under-test",
        "tenancy-bridge hop",
        "tenancy.route",
        "payment",
        "rush",
        "return",
    ] {
        assert!(all.to_lowercase().contains(&want.to_lowercase()), "span export lacks {want}: {all}");
    }
}
