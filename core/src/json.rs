//! Helpers for reading untrusted JSON with serde.

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// `T` read from a JSON object only. A derived `Deserialize` for a struct also accepts an array
/// of its fields in declaration order (`["blue"]` as `{"option":"blue"}`); wire formats that
/// promise an object must not grow that second spelling, so this wrapper asks for a map.
#[derive(Debug)]
pub(crate) struct ObjectOnly<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for MapVisitor<T> {
            type Value = T;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }

        deserializer
            .deserialize_map(MapVisitor(PhantomData))
            .map(ObjectOnly)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Pair {
        a: u8,
        b: u8,
    }

    #[test]
    fn accepts_objects_and_refuses_arrays() {
        let ok: ObjectOnly<Pair> = serde_json::from_str(r#"{"b":2,"a":1}"#).unwrap();
        assert_eq!(ok.0, Pair { a: 1, b: 2 });
        for bad in [
            "[1,2]",
            "null",
            "1",
            r#""ab""#,
            r#"{"a":1,"a":1,"b":2}"#,
            r#"{"a":1}"#,
        ] {
            assert!(
                serde_json::from_str::<ObjectOnly<Pair>>(bad).is_err(),
                "{bad}"
            );
        }
        let err = serde_json::from_str::<ObjectOnly<Pair>>("[1,2]").unwrap_err();
        assert!(err.to_string().contains("expected a JSON object"), "{err}");
        assert!(err.is_data());
    }
}
