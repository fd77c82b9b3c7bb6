//! The products Comteco sells by call centre: the service codes that P06's
//! form offers (`servicio_solicitado`) and that GIS and Smartflex take as
//! their `service` input.

use std::fmt;

/// A product code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// `internet_fibra`: internet over fibre (GPON).
    InternetFibra,
    /// `television`: cable television.
    Television,
    /// `telefonia_fija`: landline.
    TelefoniaFija,
    /// `duo_internet_tv`: internet and television.
    DuoInternetTv,
    /// `trio`: internet, television and landline.
    Trio,
}

impl Service {
    /// Every product, in the order of P06's form.
    pub const ALL: [Service; 5] = [
        Service::InternetFibra,
        Service::Television,
        Service::TelefoniaFija,
        Service::DuoInternetTv,
        Service::Trio,
    ];

    /// The code definitions use (`internet_fibra`).
    pub fn code(self) -> &'static str {
        match self {
            Service::InternetFibra => "internet_fibra",
            Service::Television => "television",
            Service::TelefoniaFija => "telefonia_fija",
            Service::DuoInternetTv => "duo_internet_tv",
            Service::Trio => "trio",
        }
    }

    /// The product with this code (exact, lower case), if any.
    pub fn from_code(code: &str) -> Option<Service> {
        Service::ALL.into_iter().find(|s| s.code() == code)
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for s in Service::ALL {
            assert_eq!(Service::from_code(s.code()), Some(s));
        }
        assert_eq!(Service::from_code("Trio"), None);
        assert_eq!(Service::from_code("internet_cobre"), None);
    }
}
