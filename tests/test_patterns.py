"""`flowstream.patterns`: the EventBridge / Lambda filter pattern language, case by case
from AWS's documentation and aws/event-ruler's README, and every invalid form refused
with the path and the rule named."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

import flowstream as fs
from flowstream import patterns

# The example event of EventBridge's pattern documentation, trimmed.
EVENT: dict[str, Any] = {
    "source": "aws.ec2",
    "detail-type": "EC2 Instance State-change Notification",
    "region": "us-east-1",
    "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-1234567890abcdef0"],
    "detail": {
        "instance-id": "i-1234567890abcdef0",
        "state": "running",
        "count": 5,
        "price": 3.5,
        "enabled": True,
        "nothing": None,
        "empty": "",
        "source-ip": "10.0.0.123",
        "tags": ["blue", "green"],
        "location": {"city": "Seattle"},
        "c-count": 300,
    },
}


def matches(pattern: dict[str, Any] | str, event: dict[str, Any] = EVENT) -> bool:
    return patterns.compile(pattern).matches(event)


class TestValues:
    @pytest.mark.parametrize(
        ("pattern", "expected"),
        [
            ({"source": ["aws.ec2"]}, True),
            ({"source": ["aws.s3", "aws.ec2"]}, True),
            ({"source": ["AWS.EC2"]}, False),
            ({"detail": {"state": ["running"]}}, True),
            ({"detail": {"state": ["running"], "count": [5]}}, True),
            ({"detail": {"state": ["running"], "count": [6]}}, False),
            ({"detail": {"enabled": [True]}}, True),
            ({"detail": {"enabled": ["true"]}}, False),
            ({"detail": {"nothing": [None]}}, True),
            ({"detail": {"empty": [None]}}, False),
            ({"detail": {"empty": [""]}}, True),
            ({"detail": {"missing": [None]}}, False),
            ({"detail": {"tags": ["green"]}}, True),
            ({"detail": {"tags": ["red"]}}, False),
            ({"detail": {"location": {"city": ["Seattle"]}}}, True),
            ({"detail": {"location": ["Seattle"]}}, False),
        ],
    )
    def test_exact_values(self, pattern: dict[str, Any], expected: bool) -> None:
        assert matches(pattern) is expected

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ('{"detail": {"c-count": [300]}}', True),
            ('{"detail": {"c-count": [300.0]}}', True),
            ('{"detail": {"c-count": [3.0e2]}}', True),
            ('{"detail": {"c-count": ["300"]}}', False),
            ('{"detail": {"c-count": [{"anything-but": [3e2]}]}}', False),
            ('{"detail": {"c-count": [{"anything-but": ["300"]}]}}', True),
        ],
    )
    def test_numbers_compare_as_numbers_never_as_strings(self, text: str, expected: bool) -> None:
        # event-ruler (the engine) adds a numeric equality for every number of a pattern
        assert matches(text) is expected

    def test_exists_false_is_decided_over_the_whole_array(self) -> None:
        pattern = {"p": {"pet": [{"exists": False}]}}
        assert not matches(pattern, {"p": [{"pet": 1}, {"first": "Bob"}]})
        assert matches(pattern, {"p": [{"first": "Ann"}, {"first": "Bob"}]})
        assert matches(pattern, {"p": ["x"]})
        assert matches(pattern, {"p": []})

    def test_anything_but_a_string_operator_keeps_values_that_are_not_strings(self) -> None:
        for value in (5, True, None, [5, "xy"]):
            assert matches({"v": [{"anything-but": {"prefix": "x"}}]}, {"v": value})
        assert not matches({"v": [{"anything-but": {"prefix": "x"}}]}, {"v": "xy"})

    def test_or_of_operator_objects_is_a_field_named_or(self) -> None:
        assert matches({"$or": [{"prefix": "z"}, {"suffix": "q"}]}, {"$or": "zebra"})
        assert not matches({"$or": [{"prefix": "z"}, {"suffix": "q"}]}, {"$or": "cat"})

    def test_numbers_beyond_a_double_never_match(self) -> None:
        assert not matches({"n": [{"numeric": [">", 0]}]}, {"n": 10**400})
        assert not matches({"n": [{"numeric": [">", 0]}]}, {"n": float("inf")})

    def test_exactly(self) -> None:
        assert matches({"detail": {"state": [{"exactly": "running"}]}})

    def test_objects_in_arrays_match_one_element_at_a_time(self) -> None:
        event = {"people": [{"first": "Anna", "last": "Smith"}, {"first": "John", "last": "Jones"}]}
        assert matches({"people": {"first": ["Anna"]}}, event)
        assert matches({"people": {"first": ["Anna"], "last": ["Smith"]}}, event)
        assert not matches({"people": {"first": ["Anna"], "last": ["Jones"]}}, event)


class TestOperators:
    @pytest.mark.parametrize(
        ("condition", "expected"),
        [
            ({"prefix": "run"}, True),
            ({"prefix": "RUN"}, False),
            ({"prefix": {"equals-ignore-case": "RUN"}}, True),
            ({"suffix": "ing"}, True),
            ({"suffix": {"equals-ignore-case": "ING"}}, True),
            ({"suffix": "ed"}, False),
            ({"equals-ignore-case": "RUNNING"}, True),
            ({"wildcard": "r*g"}, True),
            ({"wildcard": "r*x"}, False),
            ({"anything-but": "stopped"}, True),
            ({"anything-but": ["running", "stopped"]}, False),
            ({"anything-but": {"prefix": "run"}}, False),
            ({"anything-but": {"suffix": ["ped", "ing"]}}, False),
            ({"anything-but": {"equals-ignore-case": "STOPPED"}}, True),
            ({"anything-but": {"wildcard": "*n*"}}, False),
        ],
    )
    def test_string_operators(self, condition: dict[str, Any], expected: bool) -> None:
        assert matches({"detail": {"state": [condition]}}) is expected

    @pytest.mark.parametrize(
        ("condition", "expected"),
        [
            ({"numeric": ["=", 5]}, True),
            ({"numeric": [">", 0, "<=", 5]}, True),
            ({"numeric": [">", 5]}, False),
            ({"numeric": [">=", 5, "<", 10]}, True),
            ({"anything-but": [1, 2]}, True),
            ({"anything-but": 5}, False),
        ],
    )
    def test_numeric(self, condition: dict[str, Any], expected: bool) -> None:
        assert matches({"detail": {"count": [condition]}}) is expected

    def test_numeric_matches_json_numbers_only(self) -> None:
        assert not matches({"detail": {"state": [{"numeric": [">", 0]}]}})
        assert not matches({"n": [{"numeric": [">", 0]}]}, {"n": "42"})
        assert not matches({"n": [{"numeric": [">", 0]}]}, {"n": True})

    def test_exists_on_leaves(self) -> None:
        assert matches({"detail": {"state": [{"exists": True}]}})
        assert not matches({"detail": {"gone": [{"exists": True}]}})
        assert matches({"detail": {"gone": [{"exists": False}]}})
        assert not matches({"detail": {"state": [{"exists": False}]}})
        # conditions apply to leaves: a key holding an object does not "exist"
        assert not matches({"detail": {"location": [{"exists": True}]}})
        assert matches({"detail": {"location": [{"exists": False}]}})
        assert matches({"nowhere": {"deeper": [{"exists": False}]}})

    def test_cidr(self) -> None:
        assert matches({"detail": {"source-ip": [{"cidr": "10.0.0.0/24"}]}})
        assert not matches({"detail": {"source-ip": [{"cidr": "10.0.1.0/24"}]}})
        assert matches({"ip": [{"cidr": "2001:db8::/32"}]}, {"ip": "2001:db8::1"})
        assert not matches({"ip": [{"cidr": "10.0.0.0/8"}]}, {"ip": "not an address"})

    def test_wildcard_escapes(self) -> None:
        assert matches({"s": [{"wildcard": "a\\*b"}]}, {"s": "a*b"})
        assert not matches({"s": [{"wildcard": "a\\*b"}]}, {"s": "axxb"})
        assert matches({"s": [{"wildcard": "a\\\\b"}]}, {"s": "a\\b"})

    def test_or_across_fields(self) -> None:
        pattern = {"$or": [{"detail": {"state": ["stopped"]}}, {"detail": {"count": [5]}}]}
        assert matches(pattern)
        assert not matches({"$or": [{"source": ["x"]}, {"region": ["y"]}]})
        # $or holding plain values is a field named "$or"
        assert matches({"$or": ["a"]}, {"$or": "a"})

    def test_anything_but_does_not_match_a_missing_key(self) -> None:
        assert not matches({"detail": {"gone": [{"anything-but": "x"}]}})


class TestInvalid:
    @pytest.mark.parametrize(
        ("pattern", "message"),
        [
            ({"a": []}, "a: an empty array"),
            ({"a": "x"}, 'write ["x"]'),
            ({"a": [{"bogus": 1}]}, "unknown operator 'bogus'"),
            ({"a": [{"numeric": [">", "1"]}]}, "needs a number"),
            ({"a": [{"numeric": ["!", 1]}]}, "is not one of"),
            ({"a": [{"numeric": ["<", 5, ">", 1]}]}, "lower bound"),
            ({"a": [{"exists": "yes"}]}, "exists takes true or false"),
            ({"$or": [{"a": ["x"]}]}, "at least two"),
            ({"a": [{"prefix": 1}]}, "prefix takes a string"),
            ({"a": [{"anything-but": ["x", 1]}]}, "all strings or all"),
            ({"a": [{"anything-but": {"numeric": [">", 1]}}]}, "anything-but wraps"),
            ({"a": [{"wildcard": "a**b"}]}, "consecutive"),
            ({"a": [{"wildcard": "a\\b"}]}, "escape"),
            ({"a": [{"cidr": "10.0.0.0/99"}]}, "not an IP range"),
            ({"a": [{"cidr": "10.0.0.1"}]}, "must be a range"),
            ({"a": [{"cidr": "10.0.0.1/32"}]}, "fewer than 32 mask bits"),
            ({"a": [{"numeric": [">=", 5, "<=", 5]}]}, "lower bound"),
            ({"a": [{"numeric": [">", 1e308 * 10]}]}, "a double can hold"),
            ({"a": [{"anything-but": {"prefix": ""}}]}, "non-empty string"),
            ({"a": [{"prefix": "x", "suffix": "y"}]}, "exactly one operator"),
            ({"a": {"prefix": "x"}}, "must be inside an array"),
            ({}, "at least one key"),
            ("{not json", "not JSON"),
        ],
    )
    def test_is_refused_naming_the_path_and_rule(self, pattern: Any, message: str) -> None:
        with pytest.raises(fs.PatternError) as raised:
            patterns.compile(pattern)
        assert message in str(raised.value)
        assert isinstance(raised.value, fs.PipelineError)


class TestDynamoDBShape:
    """The cases of AWS's Lambda DynamoDB filtering page, over a record in Lambda's shape."""

    RECORD: ClassVar[dict[str, Any]] = {
        "eventName": "MODIFY",
        "eventSource": "aws:dynamodb",
        "dynamodb": {
            "ApproximateCreationDateTime": 1678831218.0,
            "Keys": {"CustomerName": {"S": "AnyCompany Industries"}, "Number": {"N": "4567"}},
            "NewImage": {
                "AccountManager": {"S": "Pat Candella"},
                "PaymentTerms": {"S": "60 days"},
                "Organizations": {"L": [{"S": "Sales"}, {"S": "Marketing"}]},
                "Count": {"N": "101"},
            },
            "SequenceNumber": "111",
            "SizeBytes": 26,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        },
    }

    @pytest.mark.parametrize(
        ("pattern", "expected"),
        [
            ({"dynamodb": {"NewImage": {"AccountManager": {"S": ["Pat Candella"]}}}}, True),
            ({"dynamodb": {"NewImage": {"AccountManager": ["Pat Candella"]}}}, False),
            ({"dynamodb": {"Keys": {"Number": {"N": ["4567"]}}}}, True),
            ({"dynamodb": {"NewImage": {"PaymentTerms": {"S": [{"prefix": "60"}]}}}}, True),
            ({"dynamodb": {"NewImage": {"Organizations": {"L": {"S": [{"exists": True}]}}}}}, True),
            ({"dynamodb": {"NewImage": {"AccountManager": {"S": [{"exists": True}]}}}}, True),
            ({"dynamodb": {"NewImage": {"AccountManager": [{"exists": True}]}}}, False),
            # Lambda: numeric never matches an N value (a string in the event) ...
            ({"dynamodb": {"NewImage": {"Count": {"N": [{"numeric": [">", 100]}]}}}}, False),
            # ... but the creation time is a number
            ({"dynamodb": {"ApproximateCreationDateTime": [{"numeric": [">", 0]}]}}, True),
            ({"eventName": ["INSERT", "MODIFY"]}, True),
        ],
    )
    def test_lambda_filtering_cases(self, pattern: dict[str, Any], expected: bool) -> None:
        assert matches(pattern, self.RECORD) is expected

    def test_numeric_or_anything_but_on_n(self) -> None:
        # AWS-validated: N "42" matches through anything-but, N "101" does not
        pattern = {
            "dynamodb": {
                "NewImage": {"Count": {"N": [{"numeric": [">", 100]}, {"anything-but": "101"}]}}
            }
        }
        record = {"dynamodb": {"NewImage": {"Count": {"N": "42"}}}}
        assert matches(pattern, record)
        assert not matches(pattern, self.RECORD)
