//! API-level tests: lazy shared payload decoding, introspection, errors,
//! and a no-panic sweep over malformed rules and payloads.

use midge_rules::{fuzz_one, Clause, EventKind, Input, Rule};

fn rule(sql: &str) -> Rule {
    match Rule::compile("r", sql) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn payload_decoded_lazily_and_once() {
    let raw = rule(r#"SELECT clientid FROM "t/#""#);
    let json1 = rule(r#"SELECT payload.a AS a FROM "t/#""#);
    let json2 = rule(r#"SELECT payload.b AS b FROM "t/#" WHERE payload.a = 1"#);
    assert!(!raw.reads_payload_json());
    assert!(json1.reads_payload_json());
    assert!(rule(r#"SELECT payload('a') AS a FROM "t/#""#).reads_payload_json());

    let input = Input::message("t/1", br#"{"a": 1, "b": 2}"#).clientid("c");
    assert_eq!(raw.apply(&input).map(|r| r.len()), Ok(1));
    assert!(!input.payload_decoded(), "raw-only rule must not decode");
    assert_eq!(json1.apply(&input).map(|r| r.len()), Ok(1));
    assert!(input.payload_decoded());
    let rows = json2.apply(&input).expect("ok");
    assert_eq!(rows[0]["b"], 2);
}

#[test]
fn lazy_fields_are_computed_only_when_a_rule_reads_them() {
    use std::cell::Cell;
    let asked = Cell::new(0);
    let lazy = |name: &str| {
        asked.set(asked.get() + 1);
        (name == "peername").then(|| midge_rules::Value::from("10.0.0.1:5000"))
    };
    let input = Input::message("t/1", b"{}").clientid("c").lazy(&lazy);
    let rows = rule(r#"SELECT clientid FROM "t/#""#).apply(&input).unwrap();
    assert_eq!(rows[0]["clientid"], "c");
    assert_eq!(
        asked.get(),
        0,
        "a rule that does not read them must not build them"
    );
    let rows = rule(r#"SELECT peername FROM "t/#" WHERE peername = '10.0.0.1:5000'"#)
        .apply(&input)
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["peername"], "10.0.0.1:5000");
    // `SELECT *` includes them; an unknown one stays out.
    let rows = rule(r#"SELECT * FROM "t/#""#).apply(&input).unwrap();
    assert_eq!(rows[0]["peername"], "10.0.0.1:5000");
    assert!(!rows[0].contains_key("pub_props"));
}

#[test]
fn introspection() {
    let r = rule(r#"SELECT * FROM "a/+", '$events/client_connected', "b/#""#);
    assert_eq!(r.from_filters(), ["a/+", "$events/client_connected", "b/#"]);
    assert_eq!(r.event_kinds(), [EventKind::ClientConnected]);
    assert!(r.handles_messages());
    assert_eq!(r.id(), "r");
    assert!(r.matches(&Input::message("a/x", b"")));
    assert!(!r.matches(&Input::message("a/x/y", b"")));
    assert!(r.matches(&Input::event(EventKind::ClientConnected)));
    assert!(!r.matches(&Input::event(EventKind::ClientDisconnected)));
}

#[test]
fn errors_are_structured() {
    let e = match Rule::compile("my-rule", "SELECT x FROM \"t\"") {
        Err(e) => e,
        Ok(_) => panic!("should fail"),
    };
    assert_eq!(e.rule_id, "my-rule");
    assert_eq!((e.line, e.column), (1, 8));
    assert!(e
        .to_string()
        .starts_with("rule my-rule: line 1, column 8: unknown field `x`"));

    let r = rule(r#"SELECT 1 AS a FROM "t" WHERE payload.x > 1"#);
    let err = r.apply(&Input::message("t", b"{")).expect_err("bad json");
    assert_eq!(err.clause, Clause::Where);
    assert_eq!(err.rule_id, "r");
}

#[test]
fn rule_is_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Rule>();
}

#[test]
fn no_panics_on_malformed_input() {
    let sqls = [
        "",
        "SELECT",
        "SELECT *",
        "FROM",
        "SELECT * FROM",
        "SELECT * FROM \"\"",
        "SELECT ((((((( FROM \"t\"",
        "SELECT [ FROM \"t\"",
        "SELECT a[ FROM \"t\"",
        "SELECT payload.a[0] AS x FROM \"t/#\"",
        "SELECT payload.a['x'] AS x FROM \"t/#\"",
        "SELECT 9223372036854775807 + 1 AS x FROM \"t/#\"",
        "SELECT -9223372036854775808 div -1 AS x FROM \"t/#\"",
        "SELECT 99999999999999999999999 AS x FROM \"t/#\"",
        "SELECT 1e400 AS x FROM \"t/#\"",
        "SELECT bitsl(1, 100) AS x FROM \"t/#\"",
        "SELECT pad('a', 99999999999) AS x FROM \"t/#\"",
        "SELECT substr('abc', 99999999999) AS x FROM \"t/#\"",
        "SELECT sublist(99999999999, 1, [1]) AS x FROM \"t/#\"",
        "SELECT nth(-1, [1]) AS x FROM \"t/#\"",
        "SELECT sprintf('~', 1) AS x FROM \"t/#\"",
        "SELECT sprintf('~999999c', 1) AS x FROM \"t/#\"",
        "SELECT sprintf('~.99b', 5) AS x FROM \"t/#\"",
        "SELECT format_date('second', 'Z', '%Y', 9223372036854775807) AS x FROM \"t/#\"",
        "SELECT unix_ts_to_rfc3339(-9223372036854775808, 'second') AS x FROM \"t/#\"",
        "SELECT date_to_unix_ts('second', '%Y-%m', '99999-99') AS x FROM \"t/#\"",
        "SELECT hexstr2bin('zz') AS x FROM \"t/#\"",
        "SELECT hexstr2bin('é1') AS x FROM \"t/#\"",
        "SELECT topic(0) AS x FROM \"t/#\"",
        "SELECT ascii('') AS x FROM \"t/#\"",
        "SELECT 'é' =~ 1 AS x FROM \"t/#\"",
        "FOREACH 1 FROM \"t\"",
        "FOREACH payload DO item FROM \"t\"",
        "SELECT CASE END FROM \"t\"",
        "SELECT x AS FROM \"t\"",
        "SELECT \u{0} FROM \"t\"",
        "SELECT abs(-9223372036854775808) AS x FROM \"t/#\"",
        "SELECT round(1e300) AS x FROM \"t/#\"",
        "SELECT float(1, 99) AS x FROM \"t/#\"",
        "SELECT float2str(1.5, 300) AS x FROM \"t/#\"",
        "SELECT power(10, 400) AS x FROM \"t/#\"",
        "SELECT fmod(1, 0) AS x FROM \"t/#\"",
    ];
    let payloads: [&[u8]; 5] = [
        b"",
        b"{",
        b"[1,2]",
        b"\xff\xfe",
        br#"{"a":[1,{"b":null}],"x":1e308}"#,
    ];
    for sql in sqls {
        for p in payloads {
            fuzz_one(sql, p);
        }
    }
    // Mutations of a valid rule.
    let base = r#"FOREACH payload.a AS s DO s.b + 1 AS v, upper(clientid) AS c INCASE s.b > 0 FROM "t/#" WHERE payload.x = 1"#;
    for i in 0..base.len() {
        if base.is_char_boundary(i) {
            fuzz_one(&base[..i], br#"{"a":[{"b":1}],"x":1}"#);
            fuzz_one(&format!("{}){}", &base[..i], &base[i..]), b"{}");
        }
    }
}

#[test]
fn huge_flat_expression_does_not_overflow() {
    for (terms, rejected) in [(7000, true), (2040, true)] {
        let expr = vec!["1"; terms].join("+");
        let sql = format!("SELECT {expr} AS x FROM \"t\"");
        let handle = std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || Rule::compile("deep", &sql).is_err())
            .expect("spawn");
        assert_eq!(handle.join().expect("no stack overflow"), rejected);
    }
}

/// Functions offered from outside the catalogue (as the broker's plugins
/// do): `twice(x)` and variadic `total(...)`.
#[derive(Debug)]
struct Ext;

impl midge_rules::ExternalFunctions for Ext {
    fn arity(&self, name: &str) -> Option<(usize, Option<usize>)> {
        match name {
            "twice" => Some((1, Some(1))),
            "total" => Some((0, None)),
            "upper" => Some((5, Some(5))), // never consulted: the catalogue wins
            _ => None,
        }
    }
    fn call(&self, name: &str, args: &[midge_rules::Value]) -> Result<midge_rules::Value, String> {
        let nums = || args.iter().map(|a| a.as_f64().ok_or("not a number"));
        match name {
            "twice" => Ok((nums().next().ok_or("no argument")?? * 2.0).into()),
            "total" => Ok(nums().sum::<Result<f64, _>>()?.into()),
            _ => Err(format!("no {name}")),
        }
    }
}

#[test]
fn external_functions_resolve_check_arity_and_fail_per_message() {
    let ext: std::sync::Arc<dyn midge_rules::ExternalFunctions> = std::sync::Arc::new(Ext);
    let r = Rule::compile_with(
        "x",
        r#"SELECT TWICE(payload.a) AS d, total(1, 2, payload.a) AS s, upper('a') AS u FROM "t/#" WHERE twice(payload.a) > 3"#,
        Some(&ext),
    )
    .unwrap();
    let rows = r.apply(&Input::message("t/1", br#"{"a": 2}"#)).unwrap();
    assert_eq!(rows[0]["d"], 4.0);
    assert_eq!(rows[0]["s"], 5.0);
    assert_eq!(rows[0]["u"], "A");
    assert!(r
        .apply(&Input::message("t/1", br#"{"a": 1}"#))
        .unwrap()
        .is_empty());
    let e = r
        .apply(&Input::message("t/1", br#"{"a": "x"}"#))
        .unwrap_err();
    assert!(e.to_string().contains("not a number"), "{e}");

    let e = Rule::compile_with("x", r#"SELECT twice(1, 2) FROM "t""#, Some(&ext)).unwrap_err();
    assert!(
        e.to_string()
            .contains("function `twice` expects 1 argument, got 2"),
        "{e}"
    );
    let e = Rule::compile("x", r#"SELECT twice(1) FROM "t""#).unwrap_err();
    assert!(e.to_string().contains("unknown function `twice`"), "{e}");
    let e = Rule::compile_with("x", r#"SELECT thrice(1) FROM "t""#, Some(&ext)).unwrap_err();
    assert!(e.to_string().contains("unknown function `thrice`"), "{e}");
}
