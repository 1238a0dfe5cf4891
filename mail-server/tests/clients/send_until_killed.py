# Sends messages from 8 SMTP connections until the server goes away, writing to a file each
# Message-ID that got its 250. Used by the kill -9 test and by bench/mail.sh.
#   python3 send_until_killed.py PORT FILE
import smtplib, sys, threading
port, path = int(sys.argv[1]), sys.argv[2]
out, lock = open(path, "a"), threading.Lock()
def worker(n):
    try:
        smtp = smtplib.SMTP("127.0.0.1", port, timeout=5)
        smtp.ehlo("durable.test")
        i = 0
        while True:
            mid = "<%d-%d@durable.test>" % (n, i)
            smtp.sendmail("ann@remote.test", ["alice@example.test"],
                          "Message-ID: %s\r\nSubject: durable\r\n\r\nx\r\n" % mid)
            with lock:
                out.write(mid + "\n")
                out.flush()
            i += 1
    except Exception:
        pass
threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
for t in threads: t.start()
for t in threads: t.join()
