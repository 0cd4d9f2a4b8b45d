"""The Python anchor of the throughput harness: the relay a team would write with confluent-kafka
instead of running the bridge. Copies every record of SOURCE to the same partition of TARGET,
with its key, headers and timestamp; no offset commits. Prints its progress every 50 ms for the
harness: records read minus those the producer has not had acknowledged yet (len(producer)).

    python3 relay.py BOOTSTRAP GROUP SOURCE TARGET
"""
import sys
import time

from confluent_kafka import Consumer, Producer

bootstrap, group, source, target = sys.argv[1:5]
consumer = Consumer({
    "bootstrap.servers": bootstrap,
    "group.id": group,
    "auto.offset.reset": "earliest",
    "enable.auto.commit": False,
    "max.poll.interval.ms": 10000,
    "session.timeout.ms": 6000,
})
producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
consumer.subscribe([source])
read, reported = 0, time.monotonic()
while True:
    batch = consumer.consume(num_messages=1000, timeout=0.05)
    read += len(batch)
    for m in batch:
        if m.error():
            continue
        while True:
            try:
                producer.produce(target, m.value(), m.key(), partition=m.partition(),
                                 headers=m.headers(), timestamp=m.timestamp()[1])
                break
            except BufferError:
                producer.poll(0.01)
    producer.poll(0)
    if time.monotonic() - reported >= 0.05:
        print(read - len(producer), flush=True)
        reported = time.monotonic()
