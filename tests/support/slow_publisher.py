"""A publisher that writes a large version slowly, for the killed-publisher tests (run as a script).

    python -m tests.support.slow_publisher STORE_URL N_USERS LEASE_SECONDS

Prints ``VERSION <id>`` once the publish has started and ``WROTE <n>`` after every 1,000 users
handed to the store, sleeping a little between chunks so the test can SIGKILL it mid-write.
It never finishes on its own in time: the test kills it.
"""

from __future__ import annotations

import sys
import time

from bookrec.store import open_store


def payload(user_id: int) -> bytes:
    return b'{"user_id": %d, "basis": "killed", "recommendations": []}' % user_id + b" " * 200


def main() -> None:
    url, n_users, lease = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    store = open_store(url, lease_seconds=lease)
    with store.begin_publish() as pub:
        print("VERSION", pub.version, flush=True)

        def users():
            for user_id in range(n_users):
                if user_id and user_id % 1000 == 0:
                    print("WROTE", user_id, flush=True)
                    time.sleep(0.02)
                yield user_id, payload(user_id)

        pub.put_recommendations(users())
        pub.put_blob("meta", b'{"killed": false}')
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
