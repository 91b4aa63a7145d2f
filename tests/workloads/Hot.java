// Known JIT workload for the JVM: nearly all CPU time in Hot.hotMethod.
public class Hot {
    static long hotMethod(long n) {
        long x = 0;
        for (long i = 0; i < n; i++) x = (x * 31 + i) % 1000003;
        return x;
    }
    public static void main(String[] args) {
        long end = System.currentTimeMillis() + 1000L * Long.parseLong(args.length > 0 ? args[0] : "4");
        long s = 0;
        while (System.currentTimeMillis() < end) s += hotMethod(100000);
        System.out.println(s > 0 ? "done" : "zero");
    }
}
