"""A service provider's own system calling its TRM node: create a case, read it back, and
see how bad input is refused. Run by docs/examples/check.sh against a sandbox node.

    python referral_client.py NODE_DIR HOST:PORT
"""
import sys

import grpc

from trm.v1 import common_pb2, referral_pb2, referral_pb2_grpc


def channel(node_dir: str, address: str, role: str = "service_provider") -> grpc.Channel:
    def read(name: str) -> bytes:
        with open(f"{node_dir}/{name}", "rb") as f:
            return f.read()

    creds = grpc.ssl_channel_credentials(
        root_certificates=read("services-ca.pem"),  # the node's server CA
        private_key=read(f"clients/{role}.key"),  # your client certificate
        certificate_chain=read(f"clients/{role}.pem"),
    )
    # The sandbox's server certificate names "localhost".
    return grpc.secure_channel(
        address, creds, options=[("grpc.ssl_target_name_override", "localhost")]
    )


def main(node_dir: str, address: str) -> None:
    stub = referral_pb2_grpc.ReferralServiceStub(channel(node_dir, address))
    case = stub.CreateCase(
        referral_pb2.CreateCaseRequest(
            person=common_pb2.Person(
                given_name="Ana", family_name="Example", gender=common_pb2.GENDER_FEMALE
            ),
            # A retry with the same id returns this case instead of making a second one.
            request_id="0190a6f2-3c1d-7a8e-9b2c-4d5e6f708192",
        )
    )
    back = stub.GetCase(referral_pb2.GetCaseRequest(case_id=case.case_id))
    assert back.person.given_name == "Ana", back
    again = stub.CreateCase(
        referral_pb2.CreateCaseRequest(
            person=common_pb2.Person(
                given_name="Ana", family_name="Example", gender=common_pb2.GENDER_FEMALE
            ),
            request_id="0190a6f2-3c1d-7a8e-9b2c-4d5e6f708192",
        )
    )
    assert again.case_id == case.case_id, "a retry is the same case"
    try:
        stub.CreateCase(
            referral_pb2.CreateCaseRequest(person=common_pb2.Person(given_name="B"))
        )
        raise SystemExit("a case without a gender was accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
        print("refused:", e.details())
    print("created case", case.case_id)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
