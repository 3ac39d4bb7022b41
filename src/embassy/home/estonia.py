"""A small Faker provider with an Estonian flavour where Faker's et_EE locale falls back to US English.

Faker('et_EE') gives names only; addresses, cadastral numbers, document numbers and personal codes
(with a fixed reference date, so that a seed gives the same people every day) come from here.
"""

from __future__ import annotations

import datetime as dt
import random

from faker.providers import BaseProvider
from faker.providers.ssn.et_EE import checksum

# County -> (postal code prefix, municipalities with a few settlements each). A sample, not the full ADS.
COUNTIES: dict[str, tuple[str, dict[str, tuple[str, ...]]]] = {
    "Harju maakond": ("1", {"Tallinn": ("Tallinn",), "Viimsi vald": ("Haabneeme", "Pärnamäe", "Randvere"),
                            "Harku vald": ("Tabasalu", "Harku", "Vääna"), "Saue vald": ("Saue", "Laagri", "Riisipere")}),
    "Tartu maakond": ("5", {"Tartu linn": ("Tartu",), "Kambja vald": ("Kambja", "Ülenurme"),
                            "Luunja vald": ("Luunja", "Kabina")}),
    "Ida-Viru maakond": ("4", {"Narva linn": ("Narva",), "Kohtla-Järve linn": ("Kohtla-Järve",),
                               "Jõhvi vald": ("Jõhvi", "Tammiku")}),
    "Pärnu maakond": ("8", {"Pärnu linn": ("Pärnu", "Paikuse"), "Saarde vald": ("Kilingi-Nõmme", "Tihemetsa")}),
    "Lääne-Viru maakond": ("4", {"Rakvere linn": ("Rakvere",), "Tapa vald": ("Tapa", "Lehtse")}),
    "Saare maakond": ("9", {"Saaremaa vald": ("Kuressaare", "Orissaare", "Kärla")}),
    "Viljandi maakond": ("7", {"Viljandi linn": ("Viljandi",), "Mulgi vald": ("Abja-Paluoja", "Karksi-Nuia")}),
    "Võru maakond": ("6", {"Võru linn": ("Võru",), "Rõuge vald": ("Rõuge", "Haanja")}),
}
STREETS = (
    "Pikk", "Lai", "Kooli", "Aia", "Kase", "Tamme", "Vahtra", "Pärna", "Mere", "Jaama", "Kalda", "Turu",
    "Posti", "Lossi", "Kiriku", "Metsa", "Raja", "Sepa", "Veski", "Kesk", "Nurme", "Oja", "Rannakalda",
    "Tartu mnt", "Narva mnt", "Pärnu mnt", "Viru", "Suur-Sõjamäe", "Endla", "Sõpruse pst",
)
LAND_PURPOSES = ("elamumaa", "ärimaa", "maatulundusmaa", "tootmismaa", "transpordimaa", "sotsiaalmaa")
ISSUERS = ("Politsei- ja Piirivalveamet", "Eesti Vabariigi Suursaatkond Helsingis", "Eesti Vabariigi Peakonsulaat Toronto")
# Personal codes are computed against this date, not today's: the same seed gives the same people.
REFERENCE_DATE = dt.date(2026, 1, 1)


def isikukood(sex: str, birth: dt.date, serial: int) -> str:
    """An Estonian personal identity code GYYMMDDSSSC with its modulo-11 checksum."""
    century = (birth.year - 1800) // 100  # 0: 1800s, 1: 1900s, 2: 2000s
    first = 1 + 2 * century + (0 if sex == "M" else 1)
    body = f"{first}{birth:%y%m%d}{serial % 1000:03d}"
    return body + str(checksum([int(c) for c in body]))


def valid_isikukood(code: str) -> bool:
    return len(code) == 11 and code.isdigit() and checksum([int(c) for c in code[:10]]) == int(code[10])


class EstonianProvider(BaseProvider):
    """Addresses, cadastral and document numbers shaped like Estonia's registers."""

    def ee_address(self) -> dict[str, str]:
        rnd: random.Random = self.generator.random
        county = rnd.choice(sorted(COUNTIES))
        prefix, municipalities = COUNTIES[county]
        municipality = rnd.choice(sorted(municipalities))
        settlement = rnd.choice(municipalities[municipality])
        apartment = str(rnd.randint(1, 120)) if rnd.random() < 0.55 else ""
        return {
            "county": county,
            "municipality": municipality,
            "settlement": settlement,
            "street": rnd.choice(STREETS),
            "house": str(rnd.randint(1, 160)) + (rnd.choice(("", "", "", "a", "b")) if rnd.random() < 0.2 else ""),
            "apartment": apartment,
            "postal_code": prefix + f"{rnd.randint(0, 9999):04d}",
        }

    def ee_cadastral_number(self) -> str:
        """katastritunnus: municipality code, zone and parcel, e.g. 78401:101:0010."""
        rnd: random.Random = self.generator.random
        return f"{rnd.randint(10000, 99999)}:{rnd.randint(1, 999):03d}:{rnd.randint(1, 9999):04d}"

    def ee_id_card_number(self) -> str:
        rnd: random.Random = self.generator.random
        return rnd.choice(("AA", "AB", "AC", "AD")) + f"{rnd.randint(0, 9999999):07d}"

    def ee_passport_number(self) -> str:
        return "K" + f"{self.generator.random.randint(0, 9999999):07d}"

    def ee_registry_code(self) -> str:
        """A business registry code (8 digits, companies start with 1)."""
        return "1" + f"{self.generator.random.randint(0, 9999999):07d}"
