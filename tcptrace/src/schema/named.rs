//! Serde for the model's named enums: each is written as its `name()` and read back by
//! looking the name up among its `ALL` values, so the JSON names are the model's own.

use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error};

use crate::{
    engine::{Closer, Role, TimeWaitEnd, TimeWaitKind},
    event::{Errno, Family, TcpState},
};

macro_rules! by_name {
    ($($type:ty: $what:literal),* $(,)?) => {$(
        impl Serialize for $type {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.name())
            }
        }

        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<$type, D::Error> {
                let name = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
                <$type>::ALL
                    .into_iter()
                    .find(|value| value.name() == name)
                    .ok_or_else(|| D::Error::custom(format!("not {}: {name:?}", $what)))
            }
        }
    )*};
}

impl Serialize for Errno {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.name())
    }
}

impl<'de> Deserialize<'de> for Errno {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Errno, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Errno::from_name(&name).ok_or_else(|| D::Error::custom(format!("not an errno: {name:?}")))
    }
}

by_name! {
    TcpState: "a TCP state",
    Family: "an address family",
    Closer: "a closer",
    Role: "a role",
    TimeWaitEnd: "a TIME-WAIT end",
    TimeWaitKind: "a TIME-WAIT kind",
}
