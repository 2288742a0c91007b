//! The string formats the API server checks for the schemas beeline publishes.

use std::net::IpAddr;

/// Whether `value` satisfies `format`. Formats the API server does not know are not checked.
pub fn check(format: &str, value: &str) -> bool {
    match format {
        "cidr" => is_cidr(value),
        "ip" => value.parse::<IpAddr>().is_ok(),
        "ipv4" => value.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => value.parse::<std::net::Ipv6Addr>().is_ok(),
        "date-time" | "datetime" => is_rfc3339(value),
        "date" => is_date(value),
        "uuid" => is_uuid(value),
        _ => true,
    }
}

/// `address/prefix` as Go's `net.ParseCIDR` accepts it: host bits may be set, the prefix fits the family.
fn is_cidr(value: &str) -> bool {
    let Some((addr, prefix)) = value.split_once('/') else { return false };
    if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let Ok(prefix) = prefix.parse::<u8>() else { return false };
    match addr.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => prefix <= 32,
        Ok(IpAddr::V6(_)) => prefix <= 128,
        Err(_) => false,
    }
}

fn digits(s: &str, n: usize) -> Option<u32> {
    (s.len() == n && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
}

fn is_date(value: &str) -> bool {
    let mut parts = value.split('-');
    let (Some(y), Some(m), Some(d), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    matches!((digits(y, 4), digits(m, 2), digits(d, 2)), (Some(_), Some(1..=12), Some(1..=31)))
}

/// RFC 3339 `date-time`: `2024-01-02T03:04:05[.frac](Z|±hh:mm)`.
fn is_rfc3339(value: &str) -> bool {
    let Some((date, time)) = value.split_once(['T', 't']) else { return false };
    if !is_date(date) || time.len() < 9 {
        return false;
    }
    let (clock, rest) = time.split_at(8);
    let mut hms = clock.split(':');
    let ok_clock = matches!(
        (
            hms.next().and_then(|h| digits(h, 2)),
            hms.next().and_then(|m| digits(m, 2)),
            hms.next().and_then(|s| digits(s, 2))
        ),
        (Some(0..=23), Some(0..=59), Some(0..=60))
    );
    if !ok_clock {
        return false;
    }
    let rest = match rest.strip_prefix('.') {
        Some(frac) => {
            let n = frac.bytes().take_while(u8::is_ascii_digit).count();
            if n == 0 {
                return false;
            }
            &frac[n..]
        }
        None => rest,
    };
    if rest.eq_ignore_ascii_case("z") {
        return true;
    }
    let Some(offset) = rest.strip_prefix(['+', '-']) else { return false };
    let mut hm = offset.split(':');
    matches!(
        (hm.next().and_then(|h| digits(h, 2)), hm.next().and_then(|m| digits(m, 2)), hm.next()),
        (Some(0..=23), Some(0..=59), None)
    )
}

fn is_uuid(value: &str) -> bool {
    let groups: Vec<&str> = value.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn formats_accept_and_reject_like_the_api_server() {
        let cases = [
            ("cidr", "10.0.0.0/8", true),
            ("cidr", "10.0.0.1/24", true),
            ("cidr", "fd00::/64", true),
            ("cidr", "10.0.0.0/33", false),
            ("cidr", "10.0.0.0", false),
            ("cidr", "10.0.0/8", false),
            ("cidr", "fd00::/129", false),
            ("cidr", "10.0.0.0/", false),
            ("cidr", "10.0.0.0/+8", false),
            ("ip", "192.168.1.1", true),
            ("ip", "2001:db8::1", true),
            ("ip", "192.168.1.300", false),
            ("ip", "10.0.0.0/8", false),
            ("ipv4", "2001:db8::1", false),
            ("date-time", "2024-05-01T10:00:00Z", true),
            ("date-time", "2024-05-01T10:00:00.123+02:00", true),
            ("date-time", "2024-05-01 10:00:00", false),
            ("date-time", "yesterday", false),
            ("date", "2024-13-01", false),
            ("uuid", "123e4567-e89b-12d3-a456-426614174000", true),
            ("uuid", "123e4567", false),
            ("int32", "anything", true),
        ];
        for (format, value, want) in cases {
            assert_eq!(check(format, value), want, "{format} {value:?}");
        }
    }
}
