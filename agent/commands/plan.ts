export async function runPlan(_a: unknown): Promise<number> { throw new Error("todo"); }
