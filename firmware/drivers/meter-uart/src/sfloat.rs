//! IEEE 11073-20601 SFLOAT: a 16-bit decimal float, the number type of every Bluetooth health
//! characteristic read here.
//!
//! Layout: bits 15-12 are a signed 4-bit exponent, bits 11-0 a signed 12-bit mantissa;
//! value = mantissa × 10^exponent. The exponent carries the precision (1.20 is `120 × 10⁻²`).
//! Five mantissa values are reserved:
//!
//! | raw (exponent 0) | mantissa | meaning |
//! |---|---|---|
//! | `0x07FF` | +2047 | NaN (not a number) |
//! | `0x0800` | −2048 | NRes (not at this resolution) |
//! | `0x07FE` | +2046 | +INFINITY |
//! | `0x0802` | −2046 | −INFINITY |
//! | `0x0801` | −2047 | reserved for future use |
//!
//! The standard writes them with exponent 0; like the common Bluetooth parsers, this decoder
//! treats the mantissa as special whatever the exponent, so no reserved pattern is ever read as
//! a number.

/// A raw SFLOAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SFloat(pub u16);

/// A decoded SFLOAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    /// `mantissa × 10^exponent`.
    Number {
        /// -2045 ..= 2045.
        mantissa: i16,
        /// -8 ..= 7.
        exponent: i8,
    },
    /// Not a number (`0x07FF`): the device has no value.
    NaN,
    /// Not at this resolution (`0x0800`): the value exists but cannot be represented.
    NRes,
    /// Positive infinity (`0x07FE`), e.g. above the measuring range.
    PositiveInfinity,
    /// Negative infinity (`0x0802`), e.g. below the measuring range.
    NegativeInfinity,
    /// Reserved for future use (`0x0801`).
    Reserved,
}

impl Value {
    /// Whether this is one of the reserved special values.
    pub const fn is_special(self) -> bool {
        !matches!(self, Value::Number { .. })
    }
}

/// Mantissas reserved for special values (as 12-bit two's complement).
const M_NAN: i16 = 0x07FF;
const M_NRES: i16 = -0x0800;
const M_POS_INF: i16 = 0x07FE;
const M_NEG_INF: i16 = -0x07FE;
const M_RESERVED: i16 = -0x07FF;

/// Largest mantissa magnitude of a number (the specials sit beyond it).
pub const MAX_MANTISSA: i16 = 2045;

impl SFloat {
    /// NaN.
    pub const NAN: SFloat = SFloat(0x07FF);
    /// NRes.
    pub const NRES: SFloat = SFloat(0x0800);
    /// +INFINITY.
    pub const POSITIVE_INFINITY: SFloat = SFloat(0x07FE);
    /// −INFINITY.
    pub const NEGATIVE_INFINITY: SFloat = SFloat(0x0802);
    /// Reserved.
    pub const RESERVED: SFloat = SFloat(0x0801);

    /// From the two bytes as they appear in a characteristic (little endian).
    pub const fn from_le_bytes(bytes: [u8; 2]) -> Self {
        SFloat(u16::from_le_bytes(bytes))
    }

    /// The two bytes as they appear in a characteristic (little endian).
    pub const fn to_le_bytes(self) -> [u8; 2] {
        self.0.to_le_bytes()
    }

    /// `mantissa × 10^exponent`, or `None` if the mantissa is outside ±2045 or the exponent
    /// outside -8..=7.
    pub const fn new(mantissa: i16, exponent: i8) -> Option<Self> {
        if mantissa > MAX_MANTISSA || mantissa < -MAX_MANTISSA || exponent < -8 || exponent > 7 {
            return None;
        }
        let m = (mantissa as u16) & 0x0FFF;
        let e = ((exponent as u16) & 0x000F) << 12;
        Some(SFloat(e | m))
    }

    /// Decodes.
    pub const fn value(self) -> Value {
        let raw_m = (self.0 & 0x0FFF) as i16;
        // Sign-extend 12 and 4 bits.
        let mantissa = (raw_m << 4) >> 4;
        let exponent = ((self.0 as i16) >> 12) as i8;
        match mantissa {
            M_NAN => Value::NaN,
            M_NRES => Value::NRes,
            M_POS_INF => Value::PositiveInfinity,
            M_NEG_INF => Value::NegativeInfinity,
            M_RESERVED => Value::Reserved,
            _ => Value::Number { mantissa, exponent },
        }
    }

    /// The number, `None` for a special value.
    pub fn to_f32(self) -> Option<f32> {
        self.scaled(0)
    }

    /// The number times `10^shift` (a unit change without rounding through a float twice:
    /// 110 × 10⁻⁵ kg/L with shift 5 is exactly 110 mg/dL). `None` for a special value.
    pub fn scaled(self, shift: i8) -> Option<f32> {
        match self.value() {
            Value::Number { mantissa, exponent } => {
                let e = i32::from(exponent) + i32::from(shift);
                let mut v = f32::from(mantissa);
                // Multiply for non-negative powers, divide for negative ones: dividing by an
                // exact power of ten rounds once, like a decimal literal.
                let mut p = 1.0f32;
                for _ in 0..e.unsigned_abs() {
                    p *= 10.0;
                }
                if e >= 0 {
                    v *= p;
                } else {
                    v /= p;
                }
                Some(v)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// raw → expected decoding, one row per case.
    fn check(raw: u16, expected: Value) {
        assert_eq!(SFloat(raw).value(), expected, "0x{raw:04X}");
    }

    #[test]
    fn special_values_table() {
        check(0x07FF, Value::NaN);
        check(0x0800, Value::NRes);
        check(0x07FE, Value::PositiveInfinity);
        check(0x0802, Value::NegativeInfinity);
        check(0x0801, Value::Reserved);
        // The same mantissas with a non-zero exponent are still special.
        check(0xF7FF, Value::NaN);
        check(0x1800, Value::NRes);
        check(0x27FE, Value::PositiveInfinity);
        check(0x8802, Value::NegativeInfinity);
        check(0x7801, Value::Reserved);
        for s in [
            SFloat::NAN,
            SFloat::NRES,
            SFloat::POSITIVE_INFINITY,
            SFloat::NEGATIVE_INFINITY,
            SFloat::RESERVED,
        ] {
            assert!(s.value().is_special());
            assert_eq!(s.to_f32(), None, "{s:?}");
            assert_eq!(s.scaled(5), None);
        }
    }

    #[test]
    fn numbers_table() {
        check(
            0x0000,
            Value::Number {
                mantissa: 0,
                exponent: 0,
            },
        );
        check(
            0x0078,
            Value::Number {
                mantissa: 120,
                exponent: 0,
            },
        );
        // 0xF06E: exponent -1, mantissa 110 → 11.0
        check(
            0xF06E,
            Value::Number {
                mantissa: 110,
                exponent: -1,
            },
        );
        // Largest and smallest ordinary mantissas.
        check(
            0x07FD,
            Value::Number {
                mantissa: 2045,
                exponent: 0,
            },
        );
        check(
            0x0803,
            Value::Number {
                mantissa: -2045,
                exponent: 0,
            },
        );
        // Negative mantissa, negative exponent: -1 × 10^-8.
        check(
            0x8FFF,
            Value::Number {
                mantissa: -1,
                exponent: -8,
            },
        );
        // Exponent 7.
        check(
            0x7001,
            Value::Number {
                mantissa: 1,
                exponent: 7,
            },
        );
    }

    #[test]
    fn conversions() {
        assert_eq!(SFloat(0x0078).to_f32(), Some(120.0));
        assert_eq!(SFloat(0xF06E).to_f32(), Some(11.0));
        assert_eq!(SFloat(0x7001).to_f32(), Some(10_000_000.0));
        // 110 × 10⁻⁵ kg/L is 110 mg/dL.
        let glucose = SFloat::new(110, -5).expect("valid");
        assert_eq!(glucose.scaled(5), Some(110.0));
        // 61 × 10⁻⁴ mol/L is 6.1 mmol/L.
        assert_eq!(SFloat::new(61, -4).expect("valid").scaled(3), Some(6.1));
        assert_eq!(SFloat::new(-25, -1).expect("valid").to_f32(), Some(-2.5));
    }

    #[test]
    fn encode_round_trips_and_refuses_out_of_range() {
        for m in [-2045i16, -1, 0, 1, 97, 2045] {
            for e in -8i8..=7 {
                let s = SFloat::new(m, e).expect("in range");
                assert_eq!(
                    s.value(),
                    Value::Number {
                        mantissa: m,
                        exponent: e
                    }
                );
                assert_eq!(SFloat::from_le_bytes(s.to_le_bytes()), s);
            }
        }
        assert_eq!(SFloat::new(2046, 0), None, "would be +INF");
        assert_eq!(SFloat::new(-2046, 0), None, "would be -INF");
        assert_eq!(SFloat::new(1, 8), None);
        assert_eq!(SFloat::new(1, -9), None);
    }
}
