//! Helpers shared by the fuzz targets (included with `#[path]`): JSON
//! checks with serde_json as the independent reference.

#![allow(dead_code)]

use serde_json::Value;

/// `text` parses as a JSON object whose `type` is a string; returns it.
pub fn event_object(text: &str) -> serde_json::Map<String, Value> {
    let v: Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
    let Value::Object(m) = v else {
        panic!("not a JSON object: {text:?}");
    };
    assert!(
        m.get("type").is_some_and(Value::is_string),
        "no string `type`: {text:?}"
    );
    m
}

/// JSON values equal, numbers compared by value (an integer and a float
/// of the same value are the same number; simd-json and serde_json need
/// not pick the same representation for `1.0` or `-0`). Floats may differ
/// in the last bits: serde_json without its `float_roundtrip` feature (as
/// corecast builds it) does not always round correctly, so it is no exact
/// reference for long mantissas.
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
                (Some(p), Some(q), _, _) => p == q,
                (_, _, Some(p), Some(q)) => p == q,
                _ => match (x.as_f64(), y.as_f64()) {
                    (Some(p), Some(q)) => {
                        p == q || (p - q).abs() <= 4.0 * f64::EPSILON * p.abs().max(q.abs())
                    }
                    _ => false,
                },
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, p)| y.get(k).is_some_and(|q| same(p, q)))
        }
        _ => a == b,
    }
}

/// The top-level keys of a JSON object in order, duplicates kept (`None`
/// if `bytes` is not one).
pub fn top_level_keys(bytes: &[u8]) -> Option<Vec<String>> {
    struct Keys(Vec<String>);
    impl<'de> serde::Deserialize<'de> for Keys {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Keys;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Keys, A::Error> {
                    let mut keys = Vec::new();
                    while let Some((k, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                        keys.push(k);
                    }
                    Ok(Keys(keys))
                }
            }
            d.deserialize_map(V)
        }
    }
    serde_json::from_slice::<Keys>(bytes).ok().map(|k| k.0)
}

/// Whether `keys` has no duplicates.
pub fn unique(keys: &[String]) -> bool {
    let mut seen = std::collections::HashSet::new();
    keys.iter().all(|k| seen.insert(k.as_str()))
}
