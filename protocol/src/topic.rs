//! Topic names: `sentinella/v1/devices/{device}/{readings,status,ack,config}`.
//!
//! Parsing borrows from the input and never allocates; building writes into any
//! [`core::fmt::Write`] sink (a `heapless::String` on a device, a `String` on the gateway).

use core::fmt;

/// Every Sentinella topic starts with this prefix, followed by the device id.
pub const PREFIX: &str = "sentinella/v1/devices/";

/// The filter the gateway subscribes to for readings of every device.
pub const READINGS_FILTER: &str = "sentinella/v1/devices/+/readings";

/// The filter the gateway subscribes to for status messages of every device.
pub const STATUS_FILTER: &str = "sentinella/v1/devices/+/status";

/// Longest device id accepted (bytes).
pub const MAX_DEVICE_ID: usize = 64;

/// A validated device id: 1 to 64 ASCII letters, digits, `-` or `_`.
///
/// The character set keeps ids safe as MQTT client ids (rumqttd refuses `+ $ # /`), as topic
/// levels and in URLs without escaping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId<'a>(&'a str);

impl<'a> DeviceId<'a> {
    /// Validates `id`.
    pub fn parse(id: &'a str) -> Result<Self, TopicError> {
        if id.is_empty() || id.len() > MAX_DEVICE_ID {
            return Err(TopicError::BadDeviceId);
        }
        if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(TopicError::BadDeviceId);
        }
        Ok(DeviceId(id))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &'a str {
        self.0
    }
}

impl fmt::Display for DeviceId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// The last level of a device topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Device → gateway: a batch of readings (QoS 1).
    Readings,
    /// Device → gateway: battery, firmware, online; also the MQTT will.
    Status,
    /// Gateway → device: seq ranges durably stored.
    Ack,
    /// Gateway → device: schedule and clock (retained).
    Config,
}

impl Channel {
    /// The topic level for this channel.
    pub const fn as_str(self) -> &'static str {
        match self {
            Channel::Readings => "readings",
            Channel::Status => "status",
            Channel::Ack => "ack",
            Channel::Config => "config",
        }
    }

    /// Whether a device may publish on this channel (the other two are the gateway's).
    pub const fn device_publishes(self) -> bool {
        matches!(self, Channel::Readings | Channel::Status)
    }

    fn parse(level: &str) -> Result<Self, TopicError> {
        match level {
            "readings" => Ok(Channel::Readings),
            "status" => Ok(Channel::Status),
            "ack" => Ok(Channel::Ack),
            "config" => Ok(Channel::Config),
            _ => Err(TopicError::UnknownChannel),
        }
    }
}

/// A parsed device topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topic<'a> {
    /// Whose topic it is.
    pub device: DeviceId<'a>,
    /// Which of the device's topics.
    pub channel: Channel,
}

impl<'a> Topic<'a> {
    /// A topic for `device` on `channel`.
    pub fn new(device: DeviceId<'a>, channel: Channel) -> Self {
        Topic { device, channel }
    }

    /// Parses a full topic name.
    pub fn parse(topic: &'a str) -> Result<Self, TopicError> {
        let rest = topic
            .strip_prefix(PREFIX)
            .ok_or(TopicError::NotSentinella)?;
        let (device, channel) = rest.split_once('/').ok_or(TopicError::MissingChannel)?;
        let device = DeviceId::parse(device)?;
        let channel = Channel::parse(channel)?;
        Ok(Topic { device, channel })
    }
}

impl fmt::Display for Topic<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}/{}", self.device, self.channel.as_str())
    }
}

/// Whether `filter` (an MQTT subscription filter) stays inside `device`'s own topics.
///
/// The filter must start with the device's literal prefix `sentinella/v1/devices/{device}/`;
/// wildcards are allowed only after it, so `#`, `sentinella/#` or `sentinella/v1/devices/+/ack`
/// are refused.
pub fn filter_within_device(filter: &str, device: DeviceId<'_>) -> bool {
    let Some(rest) = filter.strip_prefix(PREFIX) else {
        return false;
    };
    let Some(after) = rest.strip_prefix(device.as_str()) else {
        return false;
    };
    match after.strip_prefix('/') {
        Some(tail) => !tail.is_empty(),
        None => false,
    }
}

/// Why a topic was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicError {
    /// The topic does not start with `sentinella/v1/devices/`.
    NotSentinella,
    /// No channel level after the device id.
    MissingChannel,
    /// The device id is empty, too long or has characters outside `[A-Za-z0-9_-]`.
    BadDeviceId,
    /// The last level is not one of readings, status, ack, config (or there are more levels).
    UnknownChannel,
}

impl TopicError {
    /// A stable machine-readable code.
    pub const fn code(self) -> &'static str {
        match self {
            TopicError::NotSentinella => "topic.not_sentinella",
            TopicError::MissingChannel => "topic.missing_channel",
            TopicError::BadDeviceId => "topic.bad_device_id",
            TopicError::UnknownChannel => "topic.unknown_channel",
        }
    }
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TopicError::NotSentinella => "topic is not under sentinella/v1/devices/",
            TopicError::MissingChannel => "topic has no channel after the device id",
            TopicError::BadDeviceId => "device id must be 1-64 characters of [A-Za-z0-9_-]",
            TopicError::UnknownChannel => "channel must be one of readings, status, ack, config",
        })
    }
}

#[cfg(feature = "std")]
impl std::error::Error for TopicError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(topic: &str, expected: Result<(&str, Channel), TopicError>) {
        let got = Topic::parse(topic).map(|t| (t.device.as_str(), t.channel));
        assert_eq!(got, expected, "topic {topic:?}");
    }

    #[test]
    fn parse_table() {
        use Channel::*;
        check(
            "sentinella/v1/devices/bp-001/readings",
            Ok(("bp-001", Readings)),
        );
        check("sentinella/v1/devices/X_9/status", Ok(("X_9", Status)));
        check("sentinella/v1/devices/d/ack", Ok(("d", Ack)));
        check("sentinella/v1/devices/d/config", Ok(("d", Config)));
        check(
            "sentinella/v2/devices/d/readings",
            Err(TopicError::NotSentinella),
        );
        check("", Err(TopicError::NotSentinella));
        check("sentinella/v1/devices/", Err(TopicError::MissingChannel));
        check("sentinella/v1/devices/d", Err(TopicError::MissingChannel));
        check(
            "sentinella/v1/devices//readings",
            Err(TopicError::BadDeviceId),
        );
        check(
            "sentinella/v1/devices/+/readings",
            Err(TopicError::BadDeviceId),
        );
        check(
            "sentinella/v1/devices/a.b/readings",
            Err(TopicError::BadDeviceId),
        );
        check(
            "sentinella/v1/devices/è/readings",
            Err(TopicError::BadDeviceId),
        );
        check(
            "sentinella/v1/devices/d/readings/x",
            Err(TopicError::UnknownChannel),
        );
        check(
            "sentinella/v1/devices/d/Readings",
            Err(TopicError::UnknownChannel),
        );
        let long = "sentinella/v1/devices/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/ack";
        check(long, Err(TopicError::BadDeviceId));
    }

    #[test]
    fn display_round_trips() {
        let id = DeviceId::parse("ox-7").unwrap();
        let mut s: heapless::String<96> = heapless::String::new();
        core::fmt::write(&mut s, format_args!("{}", Topic::new(id, Channel::Ack))).unwrap();
        assert_eq!(s.as_str(), "sentinella/v1/devices/ox-7/ack");
        assert_eq!(Topic::parse(&s).unwrap(), Topic::new(id, Channel::Ack));
    }

    #[test]
    fn filters_stay_inside_the_device() {
        let d = DeviceId::parse("dev1").unwrap();
        for (filter, ok) in [
            ("sentinella/v1/devices/dev1/ack", true),
            ("sentinella/v1/devices/dev1/#", true),
            ("sentinella/v1/devices/dev1/+", true),
            ("sentinella/v1/devices/dev1", false),
            ("sentinella/v1/devices/dev1/", false),
            ("sentinella/v1/devices/dev10/ack", false),
            ("sentinella/v1/devices/dev2/ack", false),
            ("sentinella/v1/devices/+/ack", false),
            ("sentinella/#", false),
            ("#", false),
            ("+/v1/devices/dev1/ack", false),
        ] {
            assert_eq!(filter_within_device(filter, d), ok, "{filter}");
        }
    }
}
